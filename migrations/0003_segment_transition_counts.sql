-- depends: 0001_initial
-- segment_transitions was recomputed from the whole membership history on every refresh
-- (a window over every row ever written, so each nightly run got slower). categorize_all
-- now records each run's moves here while it writes the history, and the materialized
-- view reads this table, which grows by at most k*k rows per run. It also counts each
-- move in the run that made it: the old view took runs from the history's run_id, which
-- every run's in-place refresh overwrites, so first categorizations drifted to the
-- latest run. Existing history is counted once, by the query the view used before (so
-- the view reads the same right after the upgrade).
CREATE TABLE segmentation.segment_transition_counts (
    game_id          text        NOT NULL,
    run_id           bigint      NOT NULL,
    changed_at       timestamptz NOT NULL,
    from_taxonomy_id bigint,
    from_segment_id  integer,
    to_taxonomy_id   bigint      NOT NULL,
    to_segment_id    integer     NOT NULL,
    players          bigint      NOT NULL CHECK (players > 0),
    FOREIGN KEY (to_taxonomy_id, to_segment_id)
        REFERENCES segmentation.segment_definitions (taxonomy_id, segment_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX segment_transition_counts_key ON segmentation.segment_transition_counts
    (game_id, run_id, from_taxonomy_id, from_segment_id, to_taxonomy_id, to_segment_id)
    NULLS NOT DISTINCT;
COMMENT ON TABLE segmentation.segment_transition_counts IS
    'Players that moved between segments in each categorize_all run (from NULL = first categorization), written with the history; read through segmentation.segment_transitions.';
COMMENT ON COLUMN segmentation.segment_transition_counts.game_id IS 'Game.';
COMMENT ON COLUMN segmentation.segment_transition_counts.run_id IS 'categorize_all run that recorded the moves (segmentation.runs).';
COMMENT ON COLUMN segmentation.segment_transition_counts.from_taxonomy_id IS 'Taxonomy of the previous segment (NULL for a first categorization).';
COMMENT ON COLUMN segmentation.segment_transition_counts.from_segment_id IS 'Previous segment (NULL for a first categorization).';
COMMENT ON COLUMN segmentation.segment_transition_counts.to_taxonomy_id IS 'Taxonomy of the new segment.';
COMMENT ON COLUMN segmentation.segment_transition_counts.to_segment_id IS 'New segment.';
COMMENT ON COLUMN segmentation.segment_transition_counts.changed_at IS 'Start of the transaction that wrote the new memberships (their valid_from).';
COMMENT ON COLUMN segmentation.segment_transition_counts.players IS 'Number of players that made this move in this run.';

INSERT INTO segmentation.segment_transition_counts
SELECT h.game_id, h.run_id, min(h.valid_from), h.from_taxonomy_id, h.from_segment_id,
       h.taxonomy_id, h.segment_id, count(*)
  FROM (SELECT m.game_id, m.run_id, m.valid_from, m.taxonomy_id, m.segment_id,
               lag(m.taxonomy_id) OVER w AS from_taxonomy_id,
               lag(m.segment_id) OVER w AS from_segment_id
          FROM segmentation.player_segment_memberships m
        WINDOW w AS (PARTITION BY m.game_id, m.player_id ORDER BY m.valid_from, m.membership_id)
       ) h
 GROUP BY h.game_id, h.run_id, h.from_taxonomy_id, h.from_segment_id, h.taxonomy_id,
          h.segment_id;
