-- nginx's split_clients arithmetic in LuaJIT, bit for bit: MurmurHash2 (ngx_murmurhash.c, seed 0,
-- the key's length as the start value) and the v2 bound floor(hundredths * 0xffffffff / 10000).
-- LuaJIT numbers are doubles: a 32-bit multiply is split into 16-bit halves to stay exact, and
-- every value is kept unsigned in [0, 2^32). Shipped for the zero-reload runtime; tests hold it
-- to real split_clients.
local bit = require "bit"
local bxor, rshift = bit.bxor, bit.rshift

local M = 0x5bd1e995
local TWO32 = 4294967296
local MASK = 4294967295

local function u32(x)
    return x % TWO32
end

local function mul32(a, b)
    local alo = a % 65536
    local ahi = (a - alo) / 65536
    return ((ahi * b) % 65536 * 65536 + alo * b) % TWO32
end

local function murmur2(s)
    local len = #s
    local h = u32(len)
    local i = 1
    while len - i + 1 >= 4 do
        local b1, b2, b3, b4 = s:byte(i, i + 3)
        local k = b1 + b2 * 256 + b3 * 65536 + b4 * 16777216
        k = mul32(k, M)
        k = u32(bxor(k, rshift(k, 24)))
        k = mul32(k, M)
        h = mul32(h, M)
        h = u32(bxor(h, k))
        i = i + 4
    end
    local rest = len - i + 1
    if rest == 3 then h = u32(bxor(h, s:byte(i + 2) * 65536)) end
    if rest >= 2 then h = u32(bxor(h, s:byte(i + 1) * 256)) end
    if rest >= 1 then
        h = u32(bxor(h, s:byte(i)))
        h = mul32(h, M)
    end
    h = u32(bxor(h, rshift(h, 13)))
    h = mul32(h, M)
    h = u32(bxor(h, rshift(h, 15)))
    return h
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
