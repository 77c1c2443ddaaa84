-- Mask functions with the same names and results on both backends, so one query text counts
-- shared and differing weights of tickets on Postgres and on SQLite (where the coordinator
-- registers them on its connections; see docs/sql.md for the sqlite3 shell and Python).
--   shared_bits(a, b [, c]): weights kept by every mask given = bit_count(a & b [& c])
--   differing_bits(a, b):    weights kept by exactly one of the two = bit_count(a # b)
-- The masks must be of the same layer (equal lengths); Postgres raises an error otherwise.
CREATE FUNCTION shared_bits(a bit varying, b bit varying) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS 'SELECT bit_count(a & b)';
CREATE FUNCTION shared_bits(a bit varying, b bit varying, c bit varying) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS 'SELECT bit_count(a & b & c)';
CREATE FUNCTION differing_bits(a bit varying, b bit varying) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS 'SELECT bit_count(a # b)';
