-- Metrics the database way: per public function call counts and times (from
-- pg_stat_user_functions, filled when track_functions is 'pl' or 'all'), and per game
-- the latest batch figures and the age of the last runs.

CREATE OR REPLACE VIEW segmentation.metrics AS
SELECT 'function'::text AS scope,
       p.proname::text AS name,
       NULL::text AS game_id,
       coalesce(s.calls, 0) AS calls,
       s.total_time AS total_ms,
       CASE WHEN s.calls > 0 THEN s.total_time / s.calls END AS mean_ms,
       NULL::bigint AS players_categorized,
       NULL::bigint AS anomalies,
       NULL::interval AS last_calibration_age,
       NULL::interval AS last_categorization_age,
       CASE WHEN current_setting('track_functions') = 'none'
            THEN 'track_functions is off: ALTER SYSTEM SET track_functions = ''pl'' to count calls'
       END AS note
  FROM pg_catalog.pg_proc p
  LEFT JOIN pg_catalog.pg_stat_user_functions s ON s.funcid = p.oid
 WHERE p.pronamespace = 'segmentation'::regnamespace AND p.proname !~ '^_'
   AND p.prokind = 'f'
UNION ALL
SELECT 'game', t.game_id, t.game_id, NULL, NULL, NULL,
       (lr.result ->> 'players')::bigint,
       (lr.result ->> 'anomalies')::bigint,
       clock_timestamp() - (SELECT max(r.finished_at) FROM segmentation.runs r
                             WHERE r.game_id = t.game_id AND r.kind = 'calibrate'
                               AND r.status = 'succeeded'),
       clock_timestamp() - lr.finished_at,
       CASE WHEN lr.finished_at IS NULL THEN 'never categorized' END
  FROM segmentation.game_behavioral_taxonomy t
  LEFT JOIN LATERAL (
        SELECT r.finished_at, r.result FROM segmentation.runs r
         WHERE r.game_id = t.game_id AND r.kind = 'categorize_all' AND r.status = 'succeeded'
         ORDER BY r.finished_at DESC LIMIT 1) lr ON true
 WHERE t.is_active;
COMMENT ON VIEW segmentation.metrics IS 'Operational metrics: calls and time per public function (pg_stat_user_functions), and per game the players categorized, anomalies and age of the last runs.';
COMMENT ON COLUMN segmentation.metrics.scope IS 'function or game.';
COMMENT ON COLUMN segmentation.metrics.name IS 'Function name or game id.';
COMMENT ON COLUMN segmentation.metrics.game_id IS 'Game (scope game).';
COMMENT ON COLUMN segmentation.metrics.calls IS 'Calls counted since the statistics were reset (scope function).';
COMMENT ON COLUMN segmentation.metrics.total_ms IS 'Total time in the function, milliseconds.';
COMMENT ON COLUMN segmentation.metrics.mean_ms IS 'Mean time per call, milliseconds.';
COMMENT ON COLUMN segmentation.metrics.players_categorized IS 'Players in the latest successful categorize_all.';
COMMENT ON COLUMN segmentation.metrics.anomalies IS 'Anomalous players in that run.';
COMMENT ON COLUMN segmentation.metrics.last_calibration_age IS 'Time since the last successful calibration.';
COMMENT ON COLUMN segmentation.metrics.last_categorization_age IS 'Time since the last successful categorize_all.';
COMMENT ON COLUMN segmentation.metrics.note IS 'Why a figure is missing (e.g. track_functions off).';
