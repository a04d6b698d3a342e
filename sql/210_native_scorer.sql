-- categorize_player(game_id, features) in C, when the library built for this version
-- loads: `segmentation install` compiles native/categorize_features.c next to the
-- server-side Python (<python_lib_dir>/<version>/segmentation_native.so) when the
-- PostgreSQL server headers and a C compiler are there. Why C, and how its cache sees a
-- re-activation at once: the header of that file. Without the library, the PL/Python
-- function of 200_categorization.sql stays; it gives the same answers, more slowly.
--
-- LANGUAGE C functions can only be created by a superuser, as can the plpython3u ones;
-- the library sits in the same root-owned, versioned directory as the Python code
-- (docs/security.md). No SET search_path on categorize_player, for the reason given
-- in 200_categorization.sql: its one query is schema-qualified to the operator.
DO $native$
DECLARE
    library text := coalesce(
        nullif(pg_catalog.current_setting('segmentation.python_lib_dir', true), ''),
        '/usr/local/lib/segmentation') || '/@VERSION@/segmentation_native.so';
    built_for text;
BEGIN
    BEGIN
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE FUNCTION segmentation._native_version() RETURNS text'
            ' LANGUAGE c IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp'
            ' AS %L, %L', library, 'native_version');
        built_for := segmentation._native_version();
    EXCEPTION WHEN undefined_file THEN
        built_for := NULL;
    END;
    IF built_for IS DISTINCT FROM '@VERSION@' THEN
        RAISE NOTICE 'categorize_player(game_id, features) runs in PL/Python: %',
            CASE WHEN built_for IS NULL THEN 'no native library at ' || library
                 ELSE pg_catalog.format('%s was built for version %s', library, built_for) END
            USING HINT = 'segmentation install builds it when the PostgreSQL server headers'
                         ' (postgresql-server-dev-15) and a C compiler are installed.';
        DROP TRIGGER IF EXISTS game_behavioral_taxonomy_changed
            ON segmentation.game_behavioral_taxonomy;
        DROP FUNCTION IF EXISTS segmentation._taxonomy_changed();
        DROP FUNCTION IF EXISTS segmentation._native_version();
        RETURN;
    END IF;

    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE FUNCTION segmentation.categorize_player(game_id text, features jsonb)'
        ' RETURNS segmentation.categorization LANGUAGE c STABLE PARALLEL UNSAFE'
        ' AS %L, %L', library, 'categorize_features');
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE FUNCTION segmentation._taxonomy_changed() RETURNS trigger'
        ' LANGUAGE c SET search_path = pg_catalog, pg_temp AS %L, %L',
        library, 'taxonomy_changed');
    -- Every write of the table, TRUNCATE included, tells every backend's C scorer to
    -- look the active taxonomy up again (after the writer commits). ENABLE ALWAYS: it
    -- fires under session_replication_role = replica too (a logical replica's apply).
    CREATE OR REPLACE TRIGGER game_behavioral_taxonomy_changed
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON segmentation.game_behavioral_taxonomy
        FOR EACH STATEMENT EXECUTE FUNCTION segmentation._taxonomy_changed();
    ALTER TABLE segmentation.game_behavioral_taxonomy
        ENABLE ALWAYS TRIGGER game_behavioral_taxonomy_changed;
END
$native$;

COMMENT ON FUNCTION segmentation.categorize_player(text, jsonb) IS
    'Categorize an ad-hoc feature vector: keys are feature names (sessions_total, sessions_per_day, active_days, ...) or raw metric totals (sessions, ...) with active_days. Missing features are imputed with the calibration median.';
