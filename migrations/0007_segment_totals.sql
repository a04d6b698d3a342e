-- depends: 0006_window_cache_partitions
-- segment_summary aggregated every game's current memberships on each refresh, so each
-- categorize_all paid for the players of all games in the database (0.6-0.8 s per
-- million current rows): a game's nightly run slowed down with every game added beside
-- it. categorize_all now writes its own game's totals here, per taxonomy and primary
-- segment, from that game's current rows, and the materialized view reads this table
-- (a few rows per segment). The current rows already present are counted here once, so
-- the view reads the same right after the upgrade.
CREATE TABLE segmentation.segment_totals (
    game_id        text     NOT NULL,
    taxonomy_id    bigint   NOT NULL,
    segment_id     integer  NOT NULL,
    players        bigint   NOT NULL CHECK (players > 0),
    anomalies      bigint   NOT NULL CHECK (anomalies >= 0),
    membership_sum float8   NOT NULL,
    degree_sums    float8[] NOT NULL,
    PRIMARY KEY (taxonomy_id, segment_id),
    FOREIGN KEY (taxonomy_id, segment_id)
        REFERENCES segmentation.segment_definitions (taxonomy_id, segment_id) ON DELETE CASCADE
);
COMMENT ON TABLE segmentation.segment_totals IS
    'Per game, taxonomy and primary segment: totals over the current memberships, written by categorize_all for its game; read through segmentation.segment_summary.';
COMMENT ON COLUMN segmentation.segment_totals.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.segment_totals.taxonomy_id IS 'Taxonomy version of the current memberships counted.';
COMMENT ON COLUMN segmentation.segment_totals.segment_id IS 'Primary segment of the players counted.';
COMMENT ON COLUMN segmentation.segment_totals.players IS 'Players whose current primary segment this is.';
COMMENT ON COLUMN segmentation.segment_totals.anomalies IS 'Anomalous players among them.';
COMMENT ON COLUMN segmentation.segment_totals.membership_sum IS 'Sum of their primary degrees.';
COMMENT ON COLUMN segmentation.segment_totals.degree_sums IS 'Sum of their degrees in each segment, in the order of the taxonomy''s segment_order.';

INSERT INTO segmentation.segment_totals
WITH per_position AS (
    SELECT m.taxonomy_id, m.segment_id, u.pos, sum(u.degree) AS degree
      FROM segmentation.player_segment_memberships m
     CROSS JOIN LATERAL unnest(m.memberships) WITH ORDINALITY u(degree, pos)
     WHERE m.valid_to IS NULL
     GROUP BY m.taxonomy_id, m.segment_id, u.pos
)
SELECT min(m.game_id), m.taxonomy_id, m.segment_id, count(*),
       count(*) FILTER (WHERE m.is_anomaly), sum(m.membership),
       (SELECT array_agg(p.degree ORDER BY p.pos) FROM per_position p
         WHERE p.taxonomy_id = m.taxonomy_id AND p.segment_id = m.segment_id)
  FROM segmentation.player_segment_memberships m
 WHERE m.valid_to IS NULL
 GROUP BY m.taxonomy_id, m.segment_id;
