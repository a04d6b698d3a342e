-- The change log behind categorize_all's window cache (plpython/segmentation/window_cache.py,
-- tables in migration 0004): every write to player_activity notes the days it touched,
-- and for the days a game's cache holds or has just let go (two cached spans back), the
-- players. Statement triggers: one insert per writing statement. ENABLE ALWAYS, so they
-- also fire under session_replication_role = replica. Logical replication's apply worker
-- fires no statement triggers at all: categorize_all bypasses the cache on a subscriber.

-- Called by the trigger below (as its owner). The games among ``games`` for which the
-- statement need note nothing: games without a cache while no run is building one. A
-- run takes the game's cache lock (window_cache.CACHE_LOCK: 7301004, hashtext(game))
-- exclusively before it reads anything, so it waits for this transaction, which then
-- holds the lock shared, and reads its rows; the next run of a game without a cache
-- rebuilds it from the rows. The lock is tried only for games without a cache (runs of
-- cached games should not wait for writers), and the cache is looked for again once
-- the lock is held: a run may have committed one in between. That second look needs a
-- new snapshot, which only READ COMMITTED gives each statement; other isolation levels
-- note every game, as before.
CREATE OR REPLACE FUNCTION segmentation._games_without_run(games text[])
RETURNS text[]
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    quiet text[] := '{}';
    g text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN quiet;
    END IF;
    -- Three statements, three snapshots: the last one is taken with the lock held.
    FOREACH g IN ARRAY games LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM segmentation.window_cache_state s
                               WHERE s.game_id = g);
        CONTINUE WHEN NOT pg_try_advisory_xact_lock_shared(7301004, hashtext(g));
        IF NOT EXISTS (SELECT 1 FROM segmentation.window_cache_state s WHERE s.game_id = g)
        THEN
            quiet := quiet || g;
        END IF;
    END LOOP;
    RETURN quiet;
END
$$;
COMMENT ON FUNCTION segmentation._games_without_run(text[]) IS
    'For the change-log trigger: the games without a window cache that no run is building (their writes need no note). Holds their cache lock shared until the transaction ends.';

-- SECURITY DEFINER: it runs as a trigger for every role allowed to write player_activity,
-- none of which needs (or gets) any privilege on the log or the cache. It only inserts
-- (game, day, player) triples taken from the statement's own rows, or empties the cache
-- after a TRUNCATE; it takes no argument and runs no dynamic SQL.
CREATE OR REPLACE FUNCTION segmentation._log_activity_changes()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    quiet text[];
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE segmentation.window_cache_state, segmentation.window_cache,
                 segmentation.activity_changes;
        RETURN NULL;
    END IF;
    -- A day after the game's cached days is read whole by the next run: noting the day
    -- suffices. (If a run is building the cache at this moment, the day may end up
    -- cached without this write; the note then makes the next run rebuild.) Games that
    -- have no cache and no run building one get no note at all (_games_without_run):
    -- the log of a game that is never batch-categorized stays empty.
    IF TG_OP = 'INSERT' THEN
        quiet := segmentation._games_without_run(ARRAY(SELECT DISTINCT game_id FROM new_rows));
        INSERT INTO segmentation.activity_changes (game_id, activity_date, player_id)
        SELECT DISTINCT r.game_id, r.activity_date,
               CASE WHEN r.activity_date <= s.cached_through
                     AND r.activity_date > s.cached_through - 2 * (s.lookback_days - 1)
                    THEN r.player_id END
          FROM new_rows r LEFT JOIN segmentation.window_cache_state s USING (game_id)
         WHERE r.game_id <> ALL (quiet);
    ELSIF TG_OP = 'UPDATE' THEN
        quiet := segmentation._games_without_run(ARRAY(
            SELECT game_id FROM old_rows UNION SELECT game_id FROM new_rows));
        INSERT INTO segmentation.activity_changes (game_id, activity_date, player_id)
        SELECT DISTINCT r.game_id, r.activity_date,
               CASE WHEN r.activity_date <= s.cached_through
                     AND r.activity_date > s.cached_through - 2 * (s.lookback_days - 1)
                    THEN r.player_id END
          FROM (SELECT game_id, player_id, activity_date FROM old_rows
                UNION ALL SELECT game_id, player_id, activity_date FROM new_rows) r
          LEFT JOIN segmentation.window_cache_state s USING (game_id)
         WHERE r.game_id <> ALL (quiet);
    ELSE
        quiet := segmentation._games_without_run(ARRAY(SELECT DISTINCT game_id FROM old_rows));
        INSERT INTO segmentation.activity_changes (game_id, activity_date, player_id)
        SELECT DISTINCT r.game_id, r.activity_date,
               CASE WHEN r.activity_date <= s.cached_through
                     AND r.activity_date > s.cached_through - 2 * (s.lookback_days - 1)
                    THEN r.player_id END
          FROM old_rows r LEFT JOIN segmentation.window_cache_state s USING (game_id)
         WHERE r.game_id <> ALL (quiet);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION segmentation._log_activity_changes() IS
    'Trigger on player_activity: logs written days (and players of cached days) for categorize_all''s window cache. SECURITY DEFINER so that writers need no privilege on the log (see sql/150_window_cache.sql).';

CREATE OR REPLACE TRIGGER log_inserts AFTER INSERT ON segmentation.player_activity
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
CREATE OR REPLACE TRIGGER log_updates AFTER UPDATE ON segmentation.player_activity
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
CREATE OR REPLACE TRIGGER log_deletes AFTER DELETE ON segmentation.player_activity
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
CREATE OR REPLACE TRIGGER log_truncates AFTER TRUNCATE ON segmentation.player_activity
    FOR EACH STATEMENT EXECUTE FUNCTION segmentation._log_activity_changes();
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_inserts;
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_updates;
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_deletes;
ALTER TABLE segmentation.player_activity ENABLE ALWAYS TRIGGER log_truncates;

-- Writes made while the triggers were missing (between an uninstall and this install)
-- were not logged: no cache may be trusted after an install. The next run rebuilds.
DELETE FROM segmentation.window_cache_state;

-- Column comments that describe what this file and window_cache.py do (the migration's
-- first wording predates them).
COMMENT ON COLUMN segmentation.window_cache.days IS
    'Active days, lookback_days - 1 bits: bit i (from the left, 0-based) is cached_through - i.';
COMMENT ON COLUMN segmentation.activity_changes.player_id IS
    'Player whose written day the game''s cache held or had just let go (within two cached spans before cached_through); NULL otherwise.';
