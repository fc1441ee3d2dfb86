package dedupe

import "fmt"

// StoreOp names a Guard call made for one message or request, as the
// observers of consumer.Pipeline and httpdedupe report it.
type StoreOp uint8

const (
	// StoreClaim is Guard.Claim (ClaimKey). String "claim".
	StoreClaim StoreOp = iota + 1
	// StoreComplete is Guard.Complete (each try). String "complete".
	StoreComplete
	// StoreRelease is Guard.Release. String "release".
	StoreRelease
	// StoreDelete is Guard.Delete, after a dead letter. String "delete".
	StoreDelete
	// StoreExtend is Guard.Extend, on a heartbeat. String "extend".
	StoreExtend
	// StoreSnooze is the store's Snooze (Snoozer), when the handler
	// snoozed (Release on a store without it). String "snooze".
	StoreSnooze
)

// String returns "claim", "complete", "release", "delete", "extend" or
// "snooze".
func (o StoreOp) String() string {
	switch o {
	case StoreClaim:
		return "claim"
	case StoreComplete:
		return "complete"
	case StoreRelease:
		return "release"
	case StoreDelete:
		return "delete"
	case StoreExtend:
		return "extend"
	case StoreSnooze:
		return "snooze"
	}
	return fmt.Sprintf("StoreOp(%d)", uint8(o))
}

// ClaimResult is what the claim of a delivery or request answered, in more
// detail than Status: a takeover, invalid input and a store error
// are told apart.
type ClaimResult uint8

const (
	// ClaimAcquired: the key was claimed, the handler runs. "acquired".
	ClaimAcquired ClaimResult = iota + 1
	// ClaimTakeover: claimed by taking over an expired lease (a previous
	// attempt crashed or stalled). "takeover".
	ClaimTakeover
	// ClaimDuplicate: the key completed before; the stored result is
	// replayed and the handler does not run. "duplicate".
	ClaimDuplicate
	// ClaimBusy: another attempt holds the key. "busy".
	ClaimBusy
	// ClaimConflict: the key completed with a different fingerprint.
	// "conflict".
	ClaimConflict
	// ClaimInvalid: no usable key or fingerprint (IsInvalidInput).
	// "invalid".
	ClaimInvalid
	// ClaimStoreError: the store did not answer. "store_error".
	ClaimStoreError
)

// String returns "acquired", "takeover", "duplicate", "busy", "conflict",
// "invalid", "store_error", or "" for the zero value.
func (c ClaimResult) String() string {
	switch c {
	case ClaimAcquired:
		return "acquired"
	case ClaimTakeover:
		return "takeover"
	case ClaimDuplicate:
		return "duplicate"
	case ClaimBusy:
		return "busy"
	case ClaimConflict:
		return "conflict"
	case ClaimInvalid:
		return "invalid"
	case ClaimStoreError:
		return "store_error"
	case 0:
		return ""
	}
	return fmt.Sprintf("ClaimResult(%d)", uint8(c))
}
