-- Views for people and BI tools (Metabase, Superset, Tableau, psql).

CREATE OR REPLACE VIEW segmentation.player_current_segment AS
SELECT m.game_id,
       m.player_id,
       m.taxonomy_id,
       t.version AS taxonomy_version,
       m.segment_id,
       s.name AS segment_name,
       m.membership,
       m.anomaly_score,
       m.is_anomaly,
       m.as_of,
       m.valid_from AS segment_since,
       m.run_id,
       (SELECT jsonb_object_agg(sd.name, u.degree)
          FROM unnest(m.memberships) WITH ORDINALITY u(degree, pos)
          JOIN segmentation.segment_definitions sd
            ON sd.taxonomy_id = m.taxonomy_id AND sd.segment_id = t.segment_order[u.pos]) AS memberships
  FROM segmentation.player_segment_memberships m
  JOIN segmentation.game_behavioral_taxonomy t ON t.taxonomy_id = m.taxonomy_id
  JOIN segmentation.segment_definitions s ON s.taxonomy_id = m.taxonomy_id AND s.segment_id = m.segment_id
 WHERE m.valid_to IS NULL;
COMMENT ON VIEW segmentation.player_current_segment IS 'One row per game and player: the current primary segment from the latest categorize_all.';
COMMENT ON COLUMN segmentation.player_current_segment.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.player_current_segment.player_id IS 'Player.';
COMMENT ON COLUMN segmentation.player_current_segment.taxonomy_id IS 'Taxonomy version that categorized the player.';
COMMENT ON COLUMN segmentation.player_current_segment.taxonomy_version IS 'Version number of that taxonomy within the game.';
COMMENT ON COLUMN segmentation.player_current_segment.segment_id IS 'Primary segment id (stable across versions when matched).';
COMMENT ON COLUMN segmentation.player_current_segment.segment_name IS 'Primary segment name.';
COMMENT ON COLUMN segmentation.player_current_segment.membership IS 'Degree of membership in the primary segment (0-1).';
COMMENT ON COLUMN segmentation.player_current_segment.anomaly_score IS 'Anomaly score; above 1 is anomalous.';
COMMENT ON COLUMN segmentation.player_current_segment.is_anomaly IS 'True when the player fits no segment.';
COMMENT ON COLUMN segmentation.player_current_segment.as_of IS 'Last day of the window the player was scored on.';
COMMENT ON COLUMN segmentation.player_current_segment.segment_since IS 'When the player entered this segment.';
COMMENT ON COLUMN segmentation.player_current_segment.run_id IS 'categorize_all run that last refreshed the row.';
COMMENT ON COLUMN segmentation.player_current_segment.memberships IS 'Degree in every segment by name (sums to 1).';

CREATE OR REPLACE VIEW segmentation.player_memberships_long AS
SELECT m.game_id,
       m.player_id,
       m.taxonomy_id,
       sd.segment_id,
       sd.name AS segment_name,
       u.degree,
       sd.segment_id = m.segment_id AS is_primary
  FROM segmentation.player_segment_memberships m
  JOIN segmentation.game_behavioral_taxonomy t ON t.taxonomy_id = m.taxonomy_id
 CROSS JOIN LATERAL unnest(m.memberships) WITH ORDINALITY u(degree, pos)
  JOIN segmentation.segment_definitions sd
    ON sd.taxonomy_id = m.taxonomy_id AND sd.segment_id = t.segment_order[u.pos]
 WHERE m.valid_to IS NULL;
COMMENT ON VIEW segmentation.player_memberships_long IS 'One row per current player and segment with the membership degree: SUM(degree) GROUP BY segment gives fuzzy segment sizes.';
COMMENT ON COLUMN segmentation.player_memberships_long.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.player_memberships_long.player_id IS 'Player.';
COMMENT ON COLUMN segmentation.player_memberships_long.taxonomy_id IS 'Taxonomy version.';
COMMENT ON COLUMN segmentation.player_memberships_long.segment_id IS 'Segment.';
COMMENT ON COLUMN segmentation.player_memberships_long.segment_name IS 'Segment name.';
COMMENT ON COLUMN segmentation.player_memberships_long.degree IS 'Degree of membership (0-1); a player''s degrees sum to 1.';
COMMENT ON COLUMN segmentation.player_memberships_long.is_primary IS 'True for the player''s primary segment.';

-- Materialized views are derived data: recreated on every install (the
-- definition may have changed) and refreshed CONCURRENTLY by categorize_all.
DROP MATERIALIZED VIEW IF EXISTS segmentation.segment_summary;
CREATE MATERIALIZED VIEW segmentation.segment_summary AS
-- From the totals categorize_all writes per game (migration 0007), a few rows per
-- segment: a refresh no longer reads any membership row, so a game's run does not pay
-- for the other games' players. Fuzzy sizes add up each primary group's degree sums by
-- array position, mapped to segment ids through the taxonomy's segment_order.
WITH degree_sums AS (
    SELECT g.taxonomy_id, h.pos, sum(h.degree) AS fuzzy_size
      FROM segmentation.segment_totals g
     CROSS JOIN LATERAL unnest(g.degree_sums) WITH ORDINALITY h(degree, pos)
     GROUP BY g.taxonomy_id, h.pos
), taxonomies AS (
    SELECT t.* FROM segmentation.game_behavioral_taxonomy t
     WHERE t.is_active OR t.taxonomy_id IN (SELECT taxonomy_id FROM segmentation.segment_totals)
), per_segment AS (
    SELECT d.taxonomy_id, t.segment_order[d.pos] AS segment_id, d.fuzzy_size,
           p.players, p.anomalies, p.membership_sum / p.players AS mean_membership
      FROM degree_sums d
      JOIN taxonomies t ON t.taxonomy_id = d.taxonomy_id
      LEFT JOIN segmentation.segment_totals p
        ON p.taxonomy_id = d.taxonomy_id AND p.segment_id = t.segment_order[d.pos]
)
SELECT t.game_id,
       t.taxonomy_id,
       t.version AS taxonomy_version,
       t.is_active,
       sd.segment_id,
       sd.name AS segment_name,
       coalesce(p.players, 0) AS players,
       coalesce(p.fuzzy_size, 0) AS fuzzy_size,
       coalesce(p.players::float8 / nullif(sum(p.players) OVER w, 0), 0) AS share,
       coalesce(p.fuzzy_size / nullif(sum(p.fuzzy_size) OVER w, 0), 0) AS fuzzy_share,
       coalesce(p.anomalies, 0) AS anomalies,
       p.mean_membership,
       sd.share AS calibration_share,
       sd.profile -> 'axis_means' AS axis_means,
       (SELECT jsonb_object_agg(f.key, f.value -> 'median') FROM jsonb_each(sd.profile -> 'features') f) AS feature_medians
  FROM taxonomies t
  JOIN segmentation.segment_definitions sd ON sd.taxonomy_id = t.taxonomy_id
  LEFT JOIN per_segment p ON p.taxonomy_id = sd.taxonomy_id AND p.segment_id = sd.segment_id
WINDOW w AS (PARTITION BY t.taxonomy_id);
CREATE UNIQUE INDEX segment_summary_key ON segmentation.segment_summary (taxonomy_id, segment_id);
COMMENT ON MATERIALIZED VIEW segmentation.segment_summary IS 'Per game, taxonomy and segment: players, fuzzy size, shares, anomalies and profile. Refreshed by categorize_all and when a taxonomy version is activated.';
COMMENT ON COLUMN segmentation.segment_summary.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.segment_summary.taxonomy_id IS 'Taxonomy version.';
COMMENT ON COLUMN segmentation.segment_summary.taxonomy_version IS 'Version number within the game.';
COMMENT ON COLUMN segmentation.segment_summary.is_active IS 'True for the game''s active taxonomy.';
COMMENT ON COLUMN segmentation.segment_summary.segment_id IS 'Segment.';
COMMENT ON COLUMN segmentation.segment_summary.segment_name IS 'Segment name.';
COMMENT ON COLUMN segmentation.segment_summary.players IS 'Players whose primary segment this is.';
COMMENT ON COLUMN segmentation.segment_summary.fuzzy_size IS 'Sum of membership degrees in this segment.';
COMMENT ON COLUMN segmentation.segment_summary.share IS 'players / all categorized players of the taxonomy.';
COMMENT ON COLUMN segmentation.segment_summary.fuzzy_share IS 'fuzzy_size / all categorized players of the taxonomy.';
COMMENT ON COLUMN segmentation.segment_summary.anomalies IS 'Anomalous players among those with this primary segment.';
COMMENT ON COLUMN segmentation.segment_summary.mean_membership IS 'Mean primary degree of the segment''s players.';
COMMENT ON COLUMN segmentation.segment_summary.calibration_share IS 'Share of the segment in the calibration population.';
COMMENT ON COLUMN segmentation.segment_summary.axis_means IS 'Mean axis scores of the segment at calibration.';
COMMENT ON COLUMN segmentation.segment_summary.feature_medians IS 'Median of each raw feature in the segment at calibration.';

DROP MATERIALIZED VIEW IF EXISTS segmentation.segment_transitions;
CREATE MATERIALIZED VIEW segmentation.segment_transitions AS
-- Counts written by categorize_all with the history (migration 0003): refreshing reads
-- k*k rows per run, not the whole history.
SELECT t.game_id,
       t.run_id,
       t.changed_at,
       t.from_taxonomy_id,
       t.from_segment_id,
       fs.name AS from_segment_name,
       t.to_taxonomy_id,
       t.to_segment_id,
       ts.name AS to_segment_name,
       t.players
  FROM segmentation.segment_transition_counts t
  LEFT JOIN segmentation.segment_definitions fs
    ON fs.taxonomy_id = t.from_taxonomy_id AND fs.segment_id = t.from_segment_id
  JOIN segmentation.segment_definitions ts
    ON ts.taxonomy_id = t.to_taxonomy_id AND ts.segment_id = t.to_segment_id;
CREATE UNIQUE INDEX segment_transitions_key ON segmentation.segment_transitions
    (game_id, run_id, from_taxonomy_id, from_segment_id, to_taxonomy_id, to_segment_id);
COMMENT ON MATERIALIZED VIEW segmentation.segment_transitions IS 'Players moving from one segment to another per categorize_all run (from NULL = newly categorized). Refreshed by categorize_all.';
COMMENT ON COLUMN segmentation.segment_transitions.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.segment_transitions.run_id IS 'categorize_all run in which the players moved.';
COMMENT ON COLUMN segmentation.segment_transitions.changed_at IS 'When the run recorded the move.';
COMMENT ON COLUMN segmentation.segment_transitions.from_taxonomy_id IS 'Taxonomy of the previous segment (NULL for new players).';
COMMENT ON COLUMN segmentation.segment_transitions.from_segment_id IS 'Previous segment (NULL for new players).';
COMMENT ON COLUMN segmentation.segment_transitions.from_segment_name IS 'Previous segment name.';
COMMENT ON COLUMN segmentation.segment_transitions.to_taxonomy_id IS 'Taxonomy of the new segment.';
COMMENT ON COLUMN segmentation.segment_transitions.to_segment_id IS 'New segment.';
COMMENT ON COLUMN segmentation.segment_transitions.to_segment_name IS 'New segment name.';
COMMENT ON COLUMN segmentation.segment_transitions.players IS 'Number of players that moved.';
