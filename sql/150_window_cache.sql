-- The change log behind categorize_all's window cache (plpython/segmentation/window_cache.py,
-- tables in migration 0004): every write to player_activity notes the days it touched,
-- and for the days a game's cache holds or has just let go (two cached spans back), the
-- players. Statement triggers: one insert per writing statement. ENABLE ALWAYS, so they
-- also fire under session_replication_role = replica. Logical replication's apply worker
-- fires no statement triggers at all: categorize_all bypasses the cache on a subscriber.

-- Called by the trigger below (as its owner). True when ``game`` has no cache and no run
-- is building one; the game's cache lock is then held shared until the transaction
-- ends. A run takes that lock (window_cache.CACHE_LOCK: 7301004, hashtext(game))
-- exclusively before it reads anything, so it waits for this transaction and reads its
-- rows; the next run of a game without a cache rebuilds it from the rows, and notes of
-- such a game are of no use. The lock is tried only for games without a cache (runs of
-- cached games should not wait for writers), and the cache is looked for again once the
-- lock is held: a run may have committed one in between. That second look needs a new
-- snapshot, which only READ COMMITTED gives each statement; other isolation levels get
-- false (they keep their notes).
CREATE OR REPLACE FUNCTION segmentation._lock_if_uncached(game text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Three statements, three snapshots: the last one is taken with the lock held.
    IF game IS NULL OR current_setting('transaction_isolation') <> 'read committed'
       OR EXISTS (SELECT 1 FROM segmentation.window_cache_state s WHERE s.game_id = game)
       OR NOT pg_try_advisory_xact_lock_shared(7301004, hashtext(game)) THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (SELECT 1 FROM segmentation.window_cache_state s
                        WHERE s.game_id = game);
END
$$;
COMMENT ON FUNCTION segmentation._lock_if_uncached(text) IS
    'For the change-log trigger: true when the game has no window cache and no run is building one (its writes need no notes); then holds its cache lock shared until the transaction ends.';

-- Called by the trigger below for the games of a statement after its first (rare: most
-- writing statements touch one game): deletes the notes of those without a cache that no
-- run is building (_lock_if_uncached).
CREATE OR REPLACE FUNCTION segmentation._forget_uncached_notes(games text[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g text;
BEGIN
    FOREACH g IN ARRAY coalesce(games, '{}') LOOP
        IF segmentation._lock_if_uncached(g) THEN
            DELETE FROM segmentation.activity_changes c WHERE c.game_id = g;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION segmentation._forget_uncached_notes(text[]) IS
    'For the change-log trigger: deletes the notes of the games without a window cache that no run is building (see _lock_if_uncached).';

-- SECURITY DEFINER: it runs as a trigger for every role allowed to write player_activity,
-- none of which needs (or gets) any privilege on the log or the cache. It only inserts
-- (game, day, player) triples taken from the statement's own rows, deletes the notes of
-- games without a cache, or empties the cache after a TRUNCATE; it takes no argument and
-- runs no dynamic SQL.
CREATE OR REPLACE FUNCTION segmentation._log_activity_changes()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first text;   -- the game of the statement's first row
    quiet text;   -- that game, if it needs no notes (_lock_if_uncached)
    games text[]; -- the games noted without players: the others to check
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE segmentation.window_cache_state, segmentation.window_cache,
                 segmentation.activity_changes;
        RETURN NULL;
    END IF;
    -- A day after the game's cached days is read whole by the next run: noting the day
    -- suffices. (If a run is building the cache at this moment, the day may end up
    -- cached without this write; the note then makes the next run rebuild.) Games
    -- without a cache and no run building one need no notes: the log of a game that is
    -- never batch-categorized stays empty. The first row's game is checked before the
    -- statement's rows are read (one read, no notes to delete for the usual one-game
    -- statement); other games' notes are written, then deleted if they need none.
    first := (SELECT game_id FROM written LIMIT 1);
    quiet := CASE WHEN segmentation._lock_if_uncached(first) THEN first END;
    WITH noted AS (
        INSERT INTO segmentation.activity_changes (game_id, activity_date, player_id)
        SELECT DISTINCT r.game_id, r.activity_date,
               CASE WHEN r.activity_date <= s.cached_through
                     AND r.activity_date > s.cached_through - 2 * (s.lookback_days - 1)
                    THEN r.player_id END
          FROM written r LEFT JOIN segmentation.window_cache_state s USING (game_id)
         WHERE r.game_id IS DISTINCT FROM quiet
        RETURNING game_id, player_id)
    SELECT array_agg(DISTINCT n.game_id) INTO games FROM noted n WHERE n.player_id IS NULL;
    PERFORM segmentation._forget_uncached_notes(games);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION segmentation._log_activity_changes() IS
    'Trigger on player_activity: logs written days (and players of cached days) for categorize_all''s window cache. SECURITY DEFINER so that writers need no privilege on the log (see sql/150_window_cache.sql).';

-- Each trigger names its rows "written" (an UPDATE has two triggers, one per side), so
-- the function has one query for every operation. An UPDATE that keeps a row's game,
-- day and player notes it twice, which the runs read as once.
CREATE OR REPLACE TRIGGER log_inserts AFTER INSERT ON segmentation.player_activity
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
CREATE OR REPLACE TRIGGER log_updates AFTER UPDATE ON segmentation.player_activity
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
CREATE OR REPLACE TRIGGER log_updated_from AFTER UPDATE ON segmentation.player_activity
    REFERENCING OLD TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
CREATE OR REPLACE TRIGGER log_deletes AFTER DELETE ON segmentation.player_activity
    REFERENCING OLD TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
CREATE OR REPLACE TRIGGER log_truncates AFTER TRUNCATE ON segmentation.player_activity
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_inserts;
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_updates;
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_updated_from;
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_deletes;
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_truncates;

-- SECURITY DEFINER: a run replaces its game's cache by emptying the game's partition of
-- window_cache (migration 0006) with TRUNCATE, or creating it on the game's first run.
-- Both need ownership of the table, and segmentation_admin, who runs categorize_all, has
-- no DDL or TRUNCATE in the schema. The function does nothing else: the partition's name
-- is derived from the game (md5, through %I), the game reaches the bound only through %L,
-- and it also deletes the game's cache state (window_cache_state), so that a call from
-- anywhere but a run (which writes the state again, window_cache._save) can only make
-- the next run rebuild. EXECUTE for segmentation_admin only (sql/900_privileges.sql).
CREATE OR REPLACE FUNCTION segmentation._empty_window_cache(game text)
RETURNS regclass
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part text := 'window_cache_' || md5(game);
    rel regclass := to_regclass(format('segmentation.%I', part));
BEGIN
    IF game IS NULL THEN
        RAISE EXCEPTION 'segmentation: game must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM segmentation.window_cache_state s WHERE s.game_id = game;
    IF rel IS NOT NULL THEN
        -- Rebuilt after the fill (_index_window_cache): 0.33 s at 1M players, against
        -- 0.6-0.7 s more for the INSERT that maintains it.
        IF to_regclass(format('segmentation.%I', part || '_player')) IS NOT NULL THEN
            EXECUTE format('DROP INDEX segmentation.%I', part || '_player');
        END IF;
        EXECUTE format('TRUNCATE %s', rel);
        RETURN rel;
    END IF;
    EXECUTE format('CREATE UNLOGGED TABLE segmentation.%I PARTITION OF segmentation.window_cache'
                   ' FOR VALUES IN (%L)', part, game);
    rel := format('segmentation.%I', part)::regclass;
    EXECUTE format('COMMENT ON TABLE %s IS %L', rel,
                   'Window cache of game ' || game || ' (a partition of window_cache).');
    -- What the parent grants (sql/900_privileges.sql): partitions do not inherit their
    -- parent's privileges, and the runs and categorize_player use the partition directly.
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO segmentation_admin', rel);
    EXECUTE format('GRANT SELECT ON %s TO segmentation_app', rel);
    RETURN rel;
END
$$;
COMMENT ON FUNCTION segmentation._empty_window_cache(text) IS
    'For categorize_all''s window cache: empties the game''s partition of window_cache (created on first use) and deletes its cache state; returns the partition. SECURITY DEFINER because TRUNCATE and CREATE need the table''s owner (see sql/150_window_cache.sql).';

-- SECURITY DEFINER, like _empty_window_cache and for the same reason (CREATE INDEX needs
-- the table's owner): after a run has filled its game's partition, indexes it by player
-- for categorize_player (window_cache.PlayerReader), which uses the cache only when this
-- index exists. The partition and index names are derived from the game (md5, through
-- %I). EXECUTE for segmentation_admin only (sql/900_privileges.sql).
CREATE OR REPLACE FUNCTION segmentation._index_window_cache(game text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part text := 'window_cache_' || md5(game);
    rel regclass := to_regclass(format('segmentation.%I', part));
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION 'segmentation: game % has no window cache', quote_literal(game)
            USING ERRCODE = '42P01';
    END IF;
    IF to_regclass(format('segmentation.%I', part || '_player')) IS NULL THEN
        EXECUTE format('CREATE INDEX %I ON %s (player_id)', part || '_player', rel);
    END IF;
END
$$;
COMMENT ON FUNCTION segmentation._index_window_cache(text) IS
    'For categorize_all''s window cache: indexes the game''s partition of window_cache by player once a run has filled it (categorize_player reads a player''s row through it). SECURITY DEFINER because CREATE INDEX needs the table''s owner (see sql/150_window_cache.sql).';

-- Writes made while the triggers were missing (between an uninstall and this install)
-- were not logged: no cache may be trusted after an install. The next run rebuilds.
DELETE FROM segmentation.window_cache_state;

-- A column comment that describes what this file and window_cache.py do (the migration's
-- first wording predates it; migration 0006 words window_cache's comments).
COMMENT ON COLUMN segmentation.activity_changes.player_id IS
    'Player whose written day the game''s cache held or had just let go (within two cached spans before cached_through); NULL otherwise.';
