-- Failed runs are logged too. A failed calibrate_taxonomy or categorize_all rolls back
-- everything it wrote, its own run-log row included; so the failure is recorded over a
-- loopback dblink connection, whose INSERT commits on its own.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'dblink') THEN
        CREATE SCHEMA IF NOT EXISTS segmentation_ext;
        REVOKE ALL ON SCHEMA segmentation_ext FROM PUBLIC;
        CREATE EXTENSION IF NOT EXISTS dblink WITH SCHEMA segmentation_ext;
    END IF;
END
$$;

-- SECURITY DEFINER, deliberately: it runs as the installing superuser so that the
-- loopback connection authenticates like the server's own OS user (peer/trust on the
-- local socket) instead of needing a password per caller. It does one thing: insert a
-- 'failed' row into segmentation.runs from its arguments, each quoted with %L.
-- search_path is pinned; EXECUTE is granted to segmentation_admin only.
CREATE OR REPLACE FUNCTION segmentation._record_failed_run(
    kind text, game_id text, parameters jsonb, started_at timestamptz,
    error_sqlstate text, error_message text, attempted_run_id bigint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    conninfo text;
    socket_dir text := split_part(current_setting('unix_socket_directories'), ',', 1);
BEGIN
    IF to_regprocedure('segmentation_ext.dblink_exec(text,text)') IS NULL THEN
        RAISE LOG 'segmentation run % (%) failed: % %; dblink is not installed, so the run log keeps no row',
            attempted_run_id, kind, error_sqlstate, error_message;
        RETURN false;
    END IF;
    conninfo := format('dbname=%s user=%s port=%s%s',
        quote_literal(current_database()), quote_literal(current_user), current_setting('port'),
        CASE WHEN socket_dir <> '' THEN ' host=' || quote_literal(trim(socket_dir)) ELSE '' END);
    PERFORM segmentation_ext.dblink_exec(conninfo, format(
        'INSERT INTO segmentation.runs (kind, game_id, started_at, finished_at, run_by, status,'
        ' parameters, error_sqlstate, error_message) VALUES (%L, %L, %L, clock_timestamp(), %L,'
        ' ''failed'', %L, %L, %L)',
        kind, game_id, started_at, session_user,
        coalesce(parameters, '{}'::jsonb) || jsonb_build_object('attempted_run_id', attempted_run_id),
        error_sqlstate, left(error_message, 2000)));
    RETURN true;
EXCEPTION WHEN OTHERS THEN
    RAISE LOG 'segmentation run % (%) failed: % %; recording it failed too: %',
        attempted_run_id, kind, error_sqlstate, error_message, SQLERRM;
    RETURN false;
END
$$;
COMMENT ON FUNCTION segmentation._record_failed_run(text, text, jsonb, timestamptz, text, text, bigint) IS
    'Internal: records a failed run in segmentation.runs over a loopback connection so the row survives the rollback. SECURITY DEFINER so the loopback connection authenticates as the installing superuser; it only inserts one quoted row, search_path is pinned, EXECUTE for segmentation_admin only.';
