-- Unified Segmentation: initial tables.
-- Released migrations are never edited: later changes are new migrations with rollbacks.

CREATE SCHEMA IF NOT EXISTS segmentation;

CREATE TABLE segmentation.player_activity (
    game_id       text  NOT NULL CHECK (length(game_id) BETWEEN 1 AND 200),
    player_id     text  NOT NULL CHECK (length(player_id) BETWEEN 1 AND 200),
    activity_date date  NOT NULL,
    metrics       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metrics) = 'object'),
    PRIMARY KEY (game_id, player_id, activity_date)
);
-- Calibration and batch categorization scan one game's window by date.
CREATE INDEX player_activity_game_date_idx ON segmentation.player_activity (game_id, activity_date);
COMMENT ON TABLE segmentation.player_activity IS
    'Input telemetry: one row per player per active day. Metrics are numeric JSON values; non-numeric and negative values are ignored as missing (see docs/data-rules.md).';
COMMENT ON COLUMN segmentation.player_activity.game_id IS 'Game the activity belongs to (1-200 characters).';
COMMENT ON COLUMN segmentation.player_activity.player_id IS 'Player identifier within the game (1-200 characters).';
COMMENT ON COLUMN segmentation.player_activity.activity_date IS 'Calendar day of the activity (UTC).';
COMMENT ON COLUMN segmentation.player_activity.metrics IS 'Daily metric values as a JSON object, e.g. {"sessions": 3, "minutes_played": 41.5, "spend_usd": 0}.';

CREATE TABLE segmentation.feature_sources (
    game_id       text     PRIMARY KEY CHECK (length(game_id) BETWEEN 1 AND 200),
    source        regclass NOT NULL,
    player_column name     NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    registered_by name     NOT NULL DEFAULT current_user
);
COMMENT ON TABLE segmentation.feature_sources IS
    'Per-game override: calibrate and categorize from a per-player feature table or view instead of player_activity.';
COMMENT ON COLUMN segmentation.feature_sources.game_id IS 'Game whose features come from the source.';
COMMENT ON COLUMN segmentation.feature_sources.source IS 'Table or view with one row per player; its numeric columns are the features.';
COMMENT ON COLUMN segmentation.feature_sources.player_column IS 'Column of the source holding the player id.';
COMMENT ON COLUMN segmentation.feature_sources.registered_at IS 'When the source was registered.';
COMMENT ON COLUMN segmentation.feature_sources.registered_by IS 'Role that registered the source.';

CREATE TABLE segmentation.game_behavioral_taxonomy (
    taxonomy_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    game_id              text    NOT NULL CHECK (length(game_id) BETWEEN 1 AND 200),
    version              integer NOT NULL CHECK (version >= 1),
    is_active            boolean NOT NULL DEFAULT false,
    calibrated_at        timestamptz NOT NULL DEFAULT now(),
    calibrated_by        name    NOT NULL DEFAULT current_user,
    as_of                date    NOT NULL,
    lookback_days        integer CHECK (lookback_days >= 1),
    population           integer NOT NULL CHECK (population >= 1),
    sampled              boolean NOT NULL DEFAULT false,
    n_axes               integer NOT NULL CHECK (n_axes >= 1),
    n_segments           integer NOT NULL CHECK (n_segments >= 1),
    variance_explained   double precision NOT NULL CHECK (variance_explained BETWEEN 0 AND 1.000001),
    feature_recipe       jsonb   NOT NULL,
    preparation          jsonb   NOT NULL,
    anomaly_model        jsonb   NOT NULL,
    drift_reference      jsonb   NOT NULL,
    quality              jsonb   NOT NULL,
    summary              jsonb   NOT NULL,
    segment_order        integer[] NOT NULL,
    parent_taxonomy_id   bigint REFERENCES segmentation.game_behavioral_taxonomy (taxonomy_id) ON DELETE SET NULL,
    package_version      text    NOT NULL,
    UNIQUE (game_id, version)
);
-- At most one active version per game, enforced by the schema.
CREATE UNIQUE INDEX game_behavioral_taxonomy_one_active
    ON segmentation.game_behavioral_taxonomy (game_id) WHERE is_active;
COMMENT ON TABLE segmentation.game_behavioral_taxonomy IS
    'One row per calibrated taxonomy version of a game. The fitted model is plain data here and in behavioral_axes and segment_definitions.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.taxonomy_id IS 'Surrogate key of the taxonomy version.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.game_id IS 'Game the taxonomy describes.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.version IS 'Version number within the game, 1, 2, ...';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.is_active IS 'True for the version used for categorization; at most one per game.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.calibrated_at IS 'When the calibration ran.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.calibrated_by IS 'Role that ran the calibration.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.as_of IS 'Last day of the calibration window.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.lookback_days IS 'Window length in days (NULL for a registered feature source).';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.population IS 'Players the model was fitted on (after sampling).';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.sampled IS 'True when the population was a uniform sample of a larger one.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.n_axes IS 'Number of behavioral axes.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.n_segments IS 'Number of segments.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.variance_explained IS 'Share of standardized feature variance explained by the axes (0-1).';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.feature_recipe IS 'How features are computed from the source (metrics, window, columns); categorization recomputes the same features.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.preparation IS 'Per-feature transforms: log flags, clamps, imputation values, centre and scale.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.anomaly_model IS 'Anomaly thresholds fixed at calibration for the contamination rate.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.drift_reference IS 'Calibration population reference (quantile bins, shares) for drift checks.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.quality IS 'Quality figures: variance explained, separation, log-likelihood, BIC, bootstrap stability.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.summary IS 'The summary returned by calibrate_taxonomy (population, features, timings).';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.segment_order IS 'segment_id of each position in membership arrays of player_segment_memberships.';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.parent_taxonomy_id IS 'Active version this one was matched against for segment continuity (lineage).';
COMMENT ON COLUMN segmentation.game_behavioral_taxonomy.package_version IS 'Unified Segmentation version that calibrated it.';

CREATE TABLE segmentation.behavioral_axes (
    taxonomy_id        bigint  NOT NULL REFERENCES segmentation.game_behavioral_taxonomy (taxonomy_id) ON DELETE CASCADE,
    axis_index         integer NOT NULL CHECK (axis_index >= 1),
    name               text    NOT NULL,
    feature_names      text[]  NOT NULL,
    loadings           double precision[] NOT NULL,
    weights            double precision[] NOT NULL,
    basis              double precision[] NOT NULL,
    variance_explained double precision NOT NULL CHECK (variance_explained BETWEEN 0 AND 1.000001),
    top_features       jsonb   NOT NULL,
    PRIMARY KEY (taxonomy_id, axis_index),
    UNIQUE (taxonomy_id, name),
    CHECK (cardinality(loadings) = cardinality(feature_names)
           AND cardinality(weights) = cardinality(feature_names)
           AND cardinality(basis) = cardinality(feature_names))
);
COMMENT ON TABLE segmentation.behavioral_axes IS 'Interpretable behavioral axes (rotated principal components) of each taxonomy version.';
COMMENT ON COLUMN segmentation.behavioral_axes.taxonomy_id IS 'Taxonomy version the axis belongs to.';
COMMENT ON COLUMN segmentation.behavioral_axes.axis_index IS 'Position of the axis, 1 = most variance.';
COMMENT ON COLUMN segmentation.behavioral_axes.name IS 'Generated human name from the top-loading features.';
COMMENT ON COLUMN segmentation.behavioral_axes.feature_names IS 'Features the loadings refer to, in order.';
COMMENT ON COLUMN segmentation.behavioral_axes.loadings IS 'Rotated loadings: correlation of each standardized feature with the axis.';
COMMENT ON COLUMN segmentation.behavioral_axes.weights IS 'Projection weights: axis score = standardized features · weights.';
COMMENT ON COLUMN segmentation.behavioral_axes.basis IS 'Orthonormal basis vector of the retained subspace (for reconstruction residuals).';
COMMENT ON COLUMN segmentation.behavioral_axes.variance_explained IS 'Share of total standardized variance explained by this axis (0-1).';
COMMENT ON COLUMN segmentation.behavioral_axes.top_features IS 'Features with the largest absolute loadings, with their loadings.';

CREATE TABLE segmentation.segment_definitions (
    taxonomy_id        bigint  NOT NULL REFERENCES segmentation.game_behavioral_taxonomy (taxonomy_id) ON DELETE CASCADE,
    segment_id         integer NOT NULL CHECK (segment_id >= 1),
    name               text    NOT NULL,
    weight             double precision NOT NULL CHECK (weight BETWEEN 0 AND 1),
    mean               double precision[] NOT NULL,
    covariance         double precision[] NOT NULL,
    size               integer NOT NULL CHECK (size >= 0),
    share              double precision NOT NULL CHECK (share BETWEEN 0 AND 1),
    profile            jsonb   NOT NULL,
    previous_segment_id integer,
    CHECK (cardinality(covariance) = cardinality(mean) * cardinality(mean)),
    PRIMARY KEY (taxonomy_id, segment_id),
    UNIQUE (taxonomy_id, name)
);
COMMENT ON TABLE segmentation.segment_definitions IS 'Segments of each taxonomy version: Gaussian mixture components in axis space, with sizes, profiles and generated names.';
COMMENT ON COLUMN segmentation.segment_definitions.taxonomy_id IS 'Taxonomy version the segment belongs to.';
COMMENT ON COLUMN segmentation.segment_definitions.segment_id IS 'Stable segment id within the game: a segment matched to the previous version keeps its id.';
COMMENT ON COLUMN segmentation.segment_definitions.name IS 'Generated human name from the profile, kept across versions when matched.';
COMMENT ON COLUMN segmentation.segment_definitions.weight IS 'Mixture weight (prior share) of the component.';
COMMENT ON COLUMN segmentation.segment_definitions.mean IS 'Component mean in axis space (one value per axis, axis order).';
COMMENT ON COLUMN segmentation.segment_definitions.covariance IS 'Component covariance in axis space, row-major n_axes x n_axes.';
COMMENT ON COLUMN segmentation.segment_definitions.size IS 'Calibration players whose primary segment this is.';
COMMENT ON COLUMN segmentation.segment_definitions.share IS 'size / population.';
COMMENT ON COLUMN segmentation.segment_definitions.profile IS 'Per original feature mean and median, axis means, and the centroid used for matching.';
COMMENT ON COLUMN segmentation.segment_definitions.previous_segment_id IS 'Segment of the parent taxonomy it was matched to (NULL = new segment).';

CREATE TABLE segmentation.player_segment_memberships (
    membership_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    game_id        text    NOT NULL,
    player_id      text    NOT NULL,
    taxonomy_id    bigint  NOT NULL,
    segment_id     integer NOT NULL,
    membership     double precision NOT NULL CHECK (membership BETWEEN 0 AND 1.000001),
    memberships    double precision[] NOT NULL,
    axis_scores    double precision[] NOT NULL,
    anomaly_score  double precision NOT NULL,
    is_anomaly     boolean NOT NULL,
    as_of          date    NOT NULL,
    run_id         bigint  NOT NULL,
    valid_from     timestamptz NOT NULL,
    valid_to       timestamptz,
    CHECK (valid_to IS NULL OR valid_to >= valid_from),
    FOREIGN KEY (taxonomy_id, segment_id)
        REFERENCES segmentation.segment_definitions (taxonomy_id, segment_id) ON DELETE CASCADE
);
-- The current row of a player; history rows have valid_to set.
CREATE UNIQUE INDEX player_segment_memberships_current
    ON segmentation.player_segment_memberships (game_id, player_id) WHERE valid_to IS NULL;
CREATE INDEX player_segment_memberships_history
    ON segmentation.player_segment_memberships (game_id, player_id, valid_from);
CREATE INDEX player_segment_memberships_taxonomy
    ON segmentation.player_segment_memberships (taxonomy_id, segment_id);
COMMENT ON TABLE segmentation.player_segment_memberships IS
    'Fuzzy segment memberships with history: a new row when a player''s segment or taxonomy changes (the previous row gets valid_to); otherwise the current row is refreshed in place.';
COMMENT ON COLUMN segmentation.player_segment_memberships.membership_id IS 'Surrogate key.';
COMMENT ON COLUMN segmentation.player_segment_memberships.game_id IS 'Game of the player.';
COMMENT ON COLUMN segmentation.player_segment_memberships.player_id IS 'Player.';
COMMENT ON COLUMN segmentation.player_segment_memberships.taxonomy_id IS 'Taxonomy version that produced the row.';
COMMENT ON COLUMN segmentation.player_segment_memberships.segment_id IS 'Primary segment (highest membership degree).';
COMMENT ON COLUMN segmentation.player_segment_memberships.membership IS 'Degree of membership in the primary segment (0-1).';
COMMENT ON COLUMN segmentation.player_segment_memberships.memberships IS 'Degree in every segment, in the taxonomy''s segment_order; sums to 1.';
COMMENT ON COLUMN segmentation.player_segment_memberships.axis_scores IS 'Score on each behavioral axis, in axis order.';
COMMENT ON COLUMN segmentation.player_segment_memberships.anomaly_score IS 'Anomaly score; above 1 means anomalous for the calibrated contamination rate.';
COMMENT ON COLUMN segmentation.player_segment_memberships.is_anomaly IS 'anomaly_score > 1.';
COMMENT ON COLUMN segmentation.player_segment_memberships.as_of IS 'Last day of the window the features were computed on.';
COMMENT ON COLUMN segmentation.player_segment_memberships.run_id IS 'Run (segmentation.runs) that wrote or last refreshed the row.';
COMMENT ON COLUMN segmentation.player_segment_memberships.valid_from IS 'When the player entered this segment under this taxonomy.';
COMMENT ON COLUMN segmentation.player_segment_memberships.valid_to IS 'When the player left it (NULL = current).';

CREATE TABLE segmentation.runs (
    run_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text   NOT NULL CHECK (kind IN ('calibrate', 'categorize_all')),
    game_id      text   NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz,
    run_by       name   NOT NULL DEFAULT current_user,
    status       text   NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    parameters   jsonb  NOT NULL DEFAULT '{}'::jsonb,
    result       jsonb,
    taxonomy_id  bigint,
    error_sqlstate text,
    error_message  text
);
CREATE INDEX runs_game_kind_idx ON segmentation.runs (game_id, kind, started_at DESC);
COMMENT ON TABLE segmentation.runs IS 'Log of calibration and batch categorization runs; run_id is the correlation id in log lines.';
COMMENT ON COLUMN segmentation.runs.run_id IS 'Run id (correlation id).';
COMMENT ON COLUMN segmentation.runs.kind IS 'calibrate or categorize_all.';
COMMENT ON COLUMN segmentation.runs.game_id IS 'Game the run worked on.';
COMMENT ON COLUMN segmentation.runs.started_at IS 'Start time.';
COMMENT ON COLUMN segmentation.runs.finished_at IS 'End time (NULL while running).';
COMMENT ON COLUMN segmentation.runs.run_by IS 'Role that started the run.';
COMMENT ON COLUMN segmentation.runs.status IS 'running, succeeded or failed.';
COMMENT ON COLUMN segmentation.runs.parameters IS 'Parameters the run was called with.';
COMMENT ON COLUMN segmentation.runs.result IS 'Returned summary: counts and timings per phase.';
COMMENT ON COLUMN segmentation.runs.taxonomy_id IS 'Taxonomy created (calibrate) or used (categorize_all).';
COMMENT ON COLUMN segmentation.runs.error_sqlstate IS 'SQLSTATE of the failure.';
COMMENT ON COLUMN segmentation.runs.error_message IS 'Error message of the failure.';
