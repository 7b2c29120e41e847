"""The Lua scripts of the Redis stock reservations (redis_reservations.py, whose docstring
lays out the keys): one per change, so that each is atomic on the server. KEYS are always the
offer's state, held, claims, pending and claimed keys, in that order."""

from server.domain.offers import CLAIMS_BEYOND_LIMIT

# An offer's first version, on opening it or rebuilding it: Redis's clock in microseconds, as
# digits (a Lua number would print in exponent notation), above any version it had before
# (while Redis's clock goes forward: see REBUILD). It is also the stock's `build`, which names
# it to the orders its claims make.
FIRST_VERSION = """
local clock = redis.call('TIME')
local first_version = clock[1] .. string.format('%06d', tonumber(clock[2]))
"""

# This Redis's run id (a new one each time Redis starts); an offer's state hash that another
# run wrote is dropped, as lost (see redis_reservations.py). One stamped by a version that
# noted no run is taken as this run's. About 7 µs of Redis's time a call (INFO, which Redis's
# ACLs count as @dangerous: Liveshop's user must be allowed it; checked at start-up).
SAME_RUN = """
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
if not run then return redis.error_reply('LIVESHOP no run_id in INFO server') end
local written_by = redis.call('HGET', KEYS[1], 'run')
if written_by and written_by ~= run then
  redis.call('DEL', KEYS[1])
elseif not written_by and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'run', run)
end
"""

OPEN = (
    FIRST_VERSION
    + SAME_RUN
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'stock', ARGV[1], 'limit', ARGV[2],
  'starts', ARGV[3], 'ends', ARGV[4], 'stopped', '0', 'expire_at', ARGV[5], 'v', first_version,
  'build', first_version, 'run', run)
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
return 1
"""
)

# One call reserves for every claim in ARGV (groups of buyer, units, key, now ms, reservation
# id), in order, each exactly as if it came alone: claims arriving together share one round
# trip (see group_commit.py). The order of checks matters: a known key answers first, so a
# retry after the end or after the last unit still finds its reservation; then a stopped offer
# answers not_active, also while a rebuild has yet to confirm it (else `paused` would send
# every claim to rebuild an offer that has ended). Over the buyer's limit comes before fewer
# units left than asked for, since claiming fewer would not help then; but nothing left at all
# is sold out whoever asks. Keep MemoryStockReservations.claim in step.
CLAIM = (
    SAME_RUN
    + f"local beyond_limit = {CLAIMS_BEYOND_LIMIT}\n"
    + """
local function claim(buyer, qty, key, now_ms, rid)
  local now = tonumber(now_ms)
  local state = redis.call('HMGET', KEYS[1], 'stock', 'limit', 'starts', 'ends', 'stopped',
    'expire_at', 'unconfirmed', 'v', 'build')
  if not state[1] then return {'paused'} end
  local stock = tonumber(state[1])
  local raw = redis.call('HGET', KEYS[3], key)
  if raw then
    local r = cjson.decode(raw)
    if r.b ~= buyer then return {'key_reused', stock} end
    -- Sent again, as it was, before its order is attached: whoever sends it is alive, so the
    -- reaper's clock starts again (pending keys are scored by their last try). Not for other
    -- terms, which the claim service refuses.
    if not r.o and not r.x and r.q == qty then redis.call('ZADD', KEYS[4], 'XX', now, key) end
    return {'duplicate', stock, r.r, r.o or '', r.q, r.x or 0, tonumber(state[8] or '0'),
      state[9] or ''}
  end
  if state[5] == '1' or now >= tonumber(state[4]) then return {'not_active', stock} end
  if now < tonumber(state[3]) then return {'not_active', stock, 'early'} end
  if state[7] then return {'paused'} end
  if stock == 0 then return {'sold_out', stock} end
  local mine = tonumber(redis.call('HGET', KEYS[2], buyer) or '0')
  if mine + qty > tonumber(state[2]) then return {'limit_reached', stock} end
  local made = tonumber(redis.call('HGET', KEYS[5], buyer) or '0')
  if made >= tonumber(state[2]) + beyond_limit then return {'claims_spent', stock} end
  if stock < qty then return {'sold_out', stock} end
  stock = redis.call('HINCRBY', KEYS[1], 'stock', -qty)
  local version = redis.call('HINCRBY', KEYS[1], 'v', 1)
  redis.call('HINCRBY', KEYS[2], buyer, qty)
  redis.call('HSET', KEYS[3], key, cjson.encode({r = rid, b = buyer, q = qty, t = now_ms}))
  redis.call('ZADD', KEYS[4], now, key)
  redis.call('HINCRBY', KEYS[5], buyer, 1)
  for i = 2, 5 do redis.call('PEXPIREAT', KEYS[i], state[6]) end
  return {'reserved', stock, rid, '', qty, 0, version, state[9] or ''}
end
local out = {}
for i = 1, #ARGV, 5 do
  out[#out + 1] = claim(ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
end
return out
"""
)

# ARGV: the key; '1' to release only if no order is attached (the reaper's way); the order to
# name on a key that has none; the reservation the key's must be ('' for any).
RELEASE = (
    SAME_RUN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if not raw then return 0 end
local r = cjson.decode(raw)
if r.x == 1 then return 0 end
if ARGV[2] == '1' and r.o then return 0 end
if ARGV[4] ~= '' and r.r ~= ARGV[4] then return 0 end
if ARGV[3] ~= '' and not r.o then r.o = ARGV[3] end
r.x = 1
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(r))
if redis.call('HGET', KEYS[1], 'sold_out') ~= '1' then
  redis.call('HINCRBY', KEYS[1], 'stock', r.q)
  redis.call('HINCRBY', KEYS[1], 'v', 1)
end
if redis.call('HINCRBY', KEYS[2], r.b, -r.q) <= 0 then redis.call('HDEL', KEYS[2], r.b) end
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""
)

# Attaches every (key, order id, units) triple in ARGV, in order; one answer per triple. An order
# of other units than the reservation's ('' for any) is not the reservation's.
ATTACH = (
    SAME_RUN
    + """
local function attach(key, order_id, units)
  if redis.call('EXISTS', KEYS[1]) == 0 then return 'paused' end
  -- Rebuilt, and not yet checked against the orders: it may be outdated (confirm_open).
  if redis.call('HEXISTS', KEYS[1], 'unconfirmed') == 1 then return 'paused' end
  local raw = redis.call('HGET', KEYS[3], key)
  if not raw then return 'unknown' end
  local r = cjson.decode(raw)
  if r.x == 1 then return 'released' end
  if not r.o and units ~= '' and tonumber(units) ~= r.q then return 'unknown' end
  if not r.o then
    r.o = order_id
    redis.call('HSET', KEYS[3], key, cjson.encode(r))
    redis.call('ZREM', KEYS[4], key)
  end
  if r.o == order_id then return 'attached' end
  return 'unknown'
end
local out = {}
for i = 1, #ARGV, 3 do out[#out + 1] = attach(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
return out
"""
)

PENDING = (
    SAME_RUN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local keys = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, k in ipairs(keys) do
  local raw = redis.call('HGET', KEYS[3], k)
  if raw then
    out[#out + 1] = k
    out[#out + 1] = raw
  end
end
return out
"""
)

# The units taken, or nil when the offer is lost.
# ARGV[1] '1': the end is a sold-out one, and the stock is marked so (see stop_if_sold_out).
STOP = (
    SAME_RUN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local was = redis.call('HMGET', KEYS[1], 'stopped', 'sold_out')
if was[1] ~= '1' or (ARGV[1] == '1' and was[2] ~= '1') then
  redis.call('HINCRBY', KEYS[1], 'v', 1)
end
redis.call('HSET', KEYS[1], 'stopped', '1')
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'sold_out', '1', 'stock', 0) end
-- Rebuilt, and not yet checked against the orders: what it counts taken may be outdated.
if redis.call('HEXISTS', KEYS[1], 'unconfirmed') == 1 then return false end
local state = redis.call('HMGET', KEYS[1], 'quantity', 'stock')
return math.max(0, tonumber(state[1]) - tonumber(state[2]))
"""
)

# Stopped, as any end stops it (so a process of the version before, which knows no `sold_out`,
# refuses claims all the same), and marked sold out.
STOP_IF_SOLD_OUT = (
    SAME_RUN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local state = redis.call('HMGET', KEYS[1], 'stock', 'stopped', 'sold_out')
if state[3] == '1' then return 1 end
if state[2] == '1' or tonumber(state[1]) > 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'stopped', '1', 'sold_out', '1')
return 1
"""
)

CONFIRM_OPEN = (
    SAME_RUN
    + """
if redis.call('HGET', KEYS[1], 'unconfirmed') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'unconfirmed')
end
return 1
"""
)

# The unconfirmed stock's notes (see unconfirmed), or nil: its token, the orders it was rebuilt
# from, its build, and its claims' records.
UNCONFIRMED = (
    SAME_RUN
    + """
local noted = redis.call('HMGET', KEYS[1], 'unconfirmed', 'rebuilt_from', 'build')
if not noted[1] then return false end
return {noted[1], noted[2] or '0', noted[3] or '0', redis.call('HVALS', KEYS[3])}
"""
)

DROP_UNCONFIRMED = (
    SAME_RUN
    + """
if redis.call('HGET', KEYS[1], 'unconfirmed') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
end
return 1
"""
)

# Keeps a key the stock does not know (ARGV[1]), with its record (ARGV[2], released: it holds
# nothing), as REBUILD keeps every order's: 1, or 0 when the key is known, -1 when lost.
REMEMBER_RELEASED = (
    SAME_RUN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[5], cjson.decode(ARGV[2]).b, 1)  -- each order was a claim
local expire_at = redis.call('HGET', KEYS[1], 'expire_at')
for _, i in ipairs({3, 5}) do redis.call('PEXPIREAT', KEYS[i], expire_at) end
return 1
"""
)

# 1 when the offer's stock is here (and of this run of Redis), 0 when it is to be rebuilt.
READY = SAME_RUN + "return redis.call('EXISTS', KEYS[1])"

# Leftovers of a partial loss (the state hash evicted alone) are dropped: the orders are the
# truth, and a reservation without an order finds itself unknown when its order arrives.
REBUILD = (
    FIRST_VERSION
    + SAME_RUN
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
-- Above the build of the offer's last stock checked (ARGV[8], '' for none): after a failover
-- this Redis's clock may be behind the one that built it. Then above every version that stock
-- reached too (2^32 changes it never makes), so the room takes the new figures. Exact as Lua
-- numbers (< 2^53).
if ARGV[8] ~= '' and tonumber(ARGV[8]) >= tonumber(first_version) then
  first_version = string.format('%.0f', tonumber(ARGV[8]) + 4294967296)
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local held = 0
for i = 9, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  local r = cjson.decode(ARGV[i + 1])
  redis.call('HINCRBY', KEYS[5], r.b, 1)  -- each order was a claim of its buyer's
  if r.x ~= 1 then
    held = held + r.q
    redis.call('HINCRBY', KEYS[2], r.b, r.q)
  end
end
local stock = math.max(0, tonumber(ARGV[1]) - held)
local stopped = ARGV[5] == '0' and '0' or '1'
redis.call('HSET', KEYS[1], 'quantity', ARGV[1], 'stock', stock, 'limit', ARGV[2],
  'starts', ARGV[3], 'ends', ARGV[4], 'stopped', stopped, 'expire_at', ARGV[6],
  'v', first_version, 'build', first_version, 'run', run)
-- '2': it ended sold out, and stays so (see stop_if_sold_out).
if ARGV[5] == '2' then redis.call('HSET', KEYS[1], 'stock', 0, 'sold_out', '1') end
-- Not stopped: it may have ended since the rebuilder read it (see confirm_open), or orders
-- been written since (see drop_unconfirmed): the orders it was rebuilt from are noted.
if stopped == '0' then
  redis.call('HSET', KEYS[1], 'unconfirmed', ARGV[7], 'rebuilt_from', (#ARGV - 8) / 2)
end
for i = 1, 5 do redis.call('PEXPIREAT', KEYS[i], ARGV[6]) end
return 1
"""
)
