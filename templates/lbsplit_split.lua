-- nginx's split_clients arithmetic in LuaJIT, bit for bit: MurmurHash2 (ngx_murmurhash.c, seed 0,
-- the key's length as the start value) and the v2 bound floor(hundredths * 0xffffffff / 10000).
-- The hash runs on LuaJIT's 32-bit bit operations; a 32-bit multiply is split into 16-bit halves so
-- that every intermediate stays an exact double below 2^48 before bit.tobit wraps it. The result is
-- made unsigned once, at the end. The lua runtime's lbsplit.conf carries this file; tests hold it to
-- real split_clients.
local bit = require "bit"
local band, bxor, rshift, tobit = bit.band, bit.bxor, bit.rshift, bit.tobit

local M = 0x5bd1e995
local TWO32 = 4294967296
local MASK = 4294967295

local function mul32(a, b)
    -- (a * b) mod 2^32 as a signed 32-bit number, for a and b signed 32-bit numbers
    local lo = band(a, 0xffff)
    local hi = rshift(a, 16)
    return tobit(lo * b + tobit(hi * b) * 65536)
end

local function murmur2(s)
    local len = #s
    local h = tobit(len)
    local i = 1
    while len - i + 1 >= 4 do
        local b1, b2, b3, b4 = s:byte(i, i + 3)
        local k = tobit(b1 + b2 * 256 + b3 * 65536 + b4 * 16777216)
        k = mul32(k, M)
        k = bxor(k, rshift(k, 24))
        k = mul32(k, M)
        h = mul32(h, M)
        h = bxor(h, k)
        i = i + 4
    end
    local rest = len - i + 1
    if rest == 3 then h = bxor(h, s:byte(i + 2) * 65536) end
    if rest >= 2 then h = bxor(h, s:byte(i + 1) * 256) end
    if rest >= 1 then
        h = bxor(h, s:byte(i))
        h = mul32(h, M)
    end
    h = bxor(h, rshift(h, 13))
    h = mul32(h, M)
    h = bxor(h, rshift(h, 15))
    return h % TWO32
end

local function v2_bound(hundredths)
    local x = hundredths * MASK  -- below 2^53: exact
    return (x - x % 10000) / 10000
end

return {
    murmur2 = murmur2,
    v2_bound = v2_bound,
    -- split_clients "$key" { P% v2; * v1; } for P in hundredths
    in_v2 = function(key, hundredths) return murmur2(key) < v2_bound(hundredths) end,
}
