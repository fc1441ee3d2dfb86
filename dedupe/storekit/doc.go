// Package storekit is for authors of dedupe stores: the dedupe state
// machine (Decide, CompleteRecord, ReleaseRecord, DeleteRecord,
// ExtendRecord), fencing tokens (NewToken, NextFence) and argument checks
// (ValidateLease). A store that can read and write a record atomically — a
// lock, a transaction, a compare-and-set on a revision — calls these under
// that atomicity, so the state machine exists once; a store that must run it
// server-side (Redis's Lua scripts) mirrors it and is held to it by the
// conformance suite in dedupe/storetest. Users of idemq never need this
// package: they use dedupe.Guard with one of the stores.
package storekit
