-- depends: 0001_initial
-- Every categorize_all refreshes each active player's current membership row in place
-- (new scores, as_of, run_id; no indexed column changes). With full pages those updates
-- cannot be HOT, so each run rewrote all four indexes and left the table bloated:
-- measured at 1M players, the history write of a second run took 17.3 s. Half-full
-- pages leave room for the new row versions on the same page (HOT, pruned on the next
-- run): 5.2 s, and the table stays the same size across runs. Cost: twice the pages.
-- Existing pages keep their fill until rewritten (VACUUM FULL, or pg_repack, applies it
-- at once).
ALTER TABLE segmentation.player_segment_memberships SET (fillfactor = 50);
