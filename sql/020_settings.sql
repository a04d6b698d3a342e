-- Settings are PostgreSQL custom settings (segmentation.*), settable per database,
-- role or session: ALTER DATABASE mydb SET segmentation.min_player_population = 1000;
-- This file defines their defaults and ranges, the segmentation.settings view, and
-- typed getters that reject out-of-range values with SQLSTATE SG020.

CREATE OR REPLACE FUNCTION segmentation.setting_definitions()
RETURNS TABLE (name text, default_value text, kind text, min_value float8, max_value float8, description text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
VALUES
    ('segmentation.min_player_population', '500', 'integer', 2, 100000000,
     'Fewest players a calibration accepts.'),
    ('segmentation.variance_explained_threshold', '0.70', 'real', 0.05, 0.99,
     'Share of variance the behavioral axes must explain.'),
    ('segmentation.default_lookback_days', '90', 'integer', 1, 3660,
     'Calibration and categorization window in days when none is given.'),
    ('segmentation.ai_optimized_segment_count', '7', 'integer', 0, 30,
     'Segments per taxonomy when none is given; 0 chooses k automatically (BIC).'),
    ('segmentation.max_concurrent_categorizations', '100', 'integer', 1, 10000,
     'Concurrent categorize_all runs across all games (advisory-lock slots).'),
    ('segmentation.cache_ttl_seconds', '300', 'integer', 0, 86400,
     'Seconds a backend keeps a cached taxonomy before re-reading it.'),
    ('segmentation.calibration_sample_size', '200000', 'integer', 500, 100000000,
     'Larger populations are calibrated on a uniform random sample of this many players.'),
    ('segmentation.anomaly_contamination', '0.01', 'real', 0.0001, 0.2,
     'Expected share of anomalous players; fixes anomaly thresholds at calibration.'),
    ('segmentation.random_seed', '0', 'integer', 0, 2147483647,
     'Seed for sampling and model fitting: same data and settings give the same taxonomy.'),
    ('segmentation.drift_psi_watch', '0.10', 'real', 0, 10,
     'Population stability index from which a feature or axis is worth watching.'),
    ('segmentation.drift_psi_recalibrate', '0.25', 'real', 0, 10,
     'Population stability index from which recalibration is advised.'),
    ('segmentation.drift_share_watch', '0.05', 'real', 0, 1,
     'Absolute segment share shift worth watching.'),
    ('segmentation.drift_share_recalibrate', '0.10', 'real', 0, 1,
     'Absolute segment share shift from which recalibration is advised.'),
    ('segmentation.python_lib_dir', '/usr/local/lib/segmentation', 'text', NULL, NULL,
     'Directory holding <version>/ of the server-side Python library.')
$$;
COMMENT ON FUNCTION segmentation.setting_definitions() IS 'Known segmentation.* settings with defaults and valid ranges.';

CREATE OR REPLACE VIEW segmentation.settings AS
WITH configured AS (
    SELECT d.name,
           (SELECT split_part(c, '=', 2) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
             WHERE s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
               AND s.setrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
               AND split_part(c, '=', 1) = d.name) AS role_db_value,
           (SELECT split_part(c, '=', 2) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
             WHERE s.setdatabase = 0
               AND s.setrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
               AND split_part(c, '=', 1) = d.name) AS role_value,
           (SELECT split_part(c, '=', 2) FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
             WHERE s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
               AND s.setrole = 0
               AND split_part(c, '=', 1) = d.name) AS db_value,
           nullif(current_setting(d.name, true), '') AS current_value
      FROM segmentation.setting_definitions() d
)
SELECT d.name,
       coalesce(c.current_value, d.default_value) AS setting,
       d.default_value,
       CASE
           WHEN c.current_value IS NULL THEN 'default'
           WHEN c.current_value = c.role_db_value THEN 'database and role'
           WHEN c.current_value = c.role_value THEN 'role'
           WHEN c.current_value = c.db_value THEN 'database'
           ELSE 'session or configuration file'
       END AS source,
       d.kind,
       d.min_value,
       d.max_value,
       CASE
           WHEN d.kind = 'text' THEN true
           -- Bounded length and exponent keep the numeric cast below from overflowing (1e400).
           WHEN length(coalesce(c.current_value, d.default_value)) > 64 THEN false
           WHEN coalesce(c.current_value, d.default_value) !~ '^\s*[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]{1,3})?\s*$' THEN false
           WHEN d.kind = 'integer' AND coalesce(c.current_value, d.default_value) !~ '^\s*[-+]?[0-9]+\s*$' THEN false
           ELSE coalesce(c.current_value, d.default_value)::numeric BETWEEN d.min_value::numeric AND d.max_value::numeric
       END AS is_valid,
       d.description
  FROM segmentation.setting_definitions() d
  JOIN configured c USING (name);
COMMENT ON VIEW segmentation.settings IS 'Effective segmentation.* settings, their source, valid range and whether the value is usable.';
COMMENT ON COLUMN segmentation.settings.name IS 'Setting name.';
COMMENT ON COLUMN segmentation.settings.setting IS 'Effective value in this session.';
COMMENT ON COLUMN segmentation.settings.default_value IS 'Built-in default.';
COMMENT ON COLUMN segmentation.settings.source IS 'Where the effective value comes from: default, database, role, database and role, session or configuration file.';
COMMENT ON COLUMN segmentation.settings.kind IS 'integer, real or text.';
COMMENT ON COLUMN segmentation.settings.min_value IS 'Smallest valid value.';
COMMENT ON COLUMN segmentation.settings.max_value IS 'Largest valid value.';
COMMENT ON COLUMN segmentation.settings.is_valid IS 'False when the value is out of range or malformed; functions using it then fail with SQLSTATE SG020.';
COMMENT ON COLUMN segmentation.settings.description IS 'What the setting does.';

CREATE OR REPLACE FUNCTION segmentation.setting_value(setting_name text) RETURNS float8
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d record;
    raw text;
BEGIN
    SELECT * INTO d FROM segmentation.setting_definitions() s WHERE s.name = setting_name;
    IF NOT FOUND OR d.kind = 'text' THEN
        -- left(): the argument may be any text, and a message must not echo 100k of it.
        RAISE EXCEPTION 'segmentation: unknown numeric setting "%"', left(setting_name, 100)
            USING ERRCODE = 'SG020', HINT = 'SELECT name FROM segmentation.settings lists the settings.';
    END IF;
    raw := coalesce(nullif(current_setting(setting_name, true), ''), d.default_value);
    -- Bounded length and exponent keep the numeric cast from overflowing (1e400 is SG020).
    IF length(raw) > 64
       OR raw !~ '^\s*[-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]{1,3})?\s*$'
       OR (d.kind = 'integer' AND raw !~ '^\s*[-+]?[0-9]+\s*$')
       OR raw::numeric NOT BETWEEN d.min_value::numeric AND d.max_value::numeric THEN
        RAISE EXCEPTION 'segmentation: setting % = "%" is invalid', setting_name, left(raw, 100)
            USING ERRCODE = 'SG020',
                  DETAIL = format('valid: %s between %s and %s (default %s)', d.kind, d.min_value, d.max_value, d.default_value),
                  HINT = format('SET %s = %s, or ALTER DATABASE ... SET / RESET %s.', setting_name, d.default_value, setting_name);
    END IF;
    RETURN raw::float8;
END
$$;
COMMENT ON FUNCTION segmentation.setting_value(text) IS 'Validated effective value of a numeric segmentation.* setting; SQLSTATE SG020 when out of range.';
