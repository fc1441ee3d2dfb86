package redisstore

// The Lua scripts below mirror dedupe.Decide, dedupe.CompleteRecord,
// dedupe.ReleaseRecord and dedupe.ExtendRecord exactly: the state machine has
// to run inside Redis so that each operation is one atomic round trip. Any
// change to those functions must be made here too; the conformance suite in
// dedupe/storetest (run by redisstore_test.go against a real server) holds
// the scripts to the same behaviour as the Go code.
//
// A record is a hash with the fields
//
//	s  state: "in_progress", "done" or "failed" (dedupe.State.String)
//	f  fingerprint
//	t  fencing token of the current (or last) lease
//	l  lease end, Unix milliseconds (0 once completed)
//	c  creation time, Unix milliseconds
//	e  retention end, Unix milliseconds; from then on the record is absent
//	r  the stored result (binary-safe), only once completed
//
// Times come from the caller's clock (ARGV), never from the Redis server's.
// Lua numbers are doubles, exact for Unix milliseconds; they are written back
// with string.format('%.0f') so that no exponent notation reaches Redis. The
// key's PEXPIRE is garbage collection only: the logical expiry e minus the
// caller's now, plus a margin (ARGV "gc"), so it never cuts a live record
// short.

// claimLua: KEYS[1] key; ARGV now, lease, retention (ms), fingerprint, new
// token, gc margin (ms). Returns {code, retry_ms, fingerprint, failed, result}
// with code 1 acquired, 2 busy, 3 duplicate, 4 conflict, 5 acquired by
// takeover.
const claimLua = `
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local fp = ARGV[4]
local token = ARGV[5]
local gc = tonumber(ARGV[6])
local cur = redis.call('HMGET', KEYS[1], 's', 'f', 'l', 'e')
local state, cfp, lu, exp = cur[1], cur[2], tonumber(cur[3]), tonumber(cur[4])
local nlu = now + lease
local nexp = now + retention
if nexp < nlu then nexp = nlu end
if state and exp and now < exp then
  if state == 'in_progress' then
    if lu and now < lu then
      return {2, lu - now, cfp or '', 0, ''}
    end
    redis.call('HSET', KEYS[1], 'f', fp, 't', token,
      'l', string.format('%.0f', nlu), 'e', string.format('%.0f', nexp))
    redis.call('PEXPIRE', KEYS[1], string.format('%.0f', nexp - now + gc))
    return {5, 0, '', 0, ''}
  end
  if state == 'done' or state == 'failed' then
    cfp = cfp or ''
    if fp ~= '' and cfp ~= '' and fp ~= cfp then
      return {4, 0, cfp, 0, ''}
    end
    local failed = 0
    if state == 'failed' then failed = 1 end
    return {3, 0, cfp, failed, redis.call('HGET', KEYS[1], 'r') or ''}
  end
end
if state then
  redis.call('DEL', KEYS[1]) -- drop the expired record's result
end
redis.call('HSET', KEYS[1], 's', 'in_progress', 'f', fp, 't', token,
  'l', string.format('%.0f', nlu), 'c', string.format('%.0f', now), 'e', string.format('%.0f', nexp))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', nexp - now + gc))
return {1, 0, '', 0, ''}
`

// ownedLua is the prologue shared by complete, release and extend: the
// caller's token must be the current token of a live in-progress record
// (dedupe's owned). An expired lease nobody took over is still owned.
const ownedLua = `
local now = tonumber(ARGV[1])
local token = ARGV[2]
local cur = redis.call('HMGET', KEYS[1], 's', 't', 'e')
local exp = tonumber(cur[3])
if not exp or now >= exp or cur[1] ~= 'in_progress' or token == '' or cur[2] ~= token then
  return 0
end
`

// completeLua: KEYS[1] key; ARGV now, token, state ("done"/"failed"),
// result, retention (ms), gc margin (ms). Returns 1, or 0 for a lost lease.
const completeLua = ownedLua + `
local nexp = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 's', ARGV[3], 'r', ARGV[4], 'l', '0', 'e', string.format('%.0f', nexp))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', nexp - now + tonumber(ARGV[6])))
return 1
`

// releaseLua: KEYS[1] key; ARGV now, token. Returns 1, or 0 for a lost lease.
const releaseLua = ownedLua + `
redis.call('DEL', KEYS[1])
return 1
`

// extendLua: KEYS[1] key; ARGV now, token, lease (ms), gc margin (ms).
// Returns 1, or 0 for a lost lease.
const extendLua = ownedLua + `
local nlu = now + tonumber(ARGV[3])
if exp < nlu then exp = nlu end
redis.call('HSET', KEYS[1], 'l', string.format('%.0f', nlu), 'e', string.format('%.0f', exp))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', exp - now + tonumber(ARGV[4])))
return 1
`
