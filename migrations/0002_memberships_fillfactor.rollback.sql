-- depends: 0001_initial
ALTER TABLE segmentation.player_segment_memberships RESET (fillfactor);
