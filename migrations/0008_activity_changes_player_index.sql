-- depends: 0007_segment_totals
-- categorize_player(player_id) reads a player's window through the window cache
-- (window_cache.PlayerReader), which must know whether the change log holds a note of
-- that player, or of an unknown player, on a cached day: an index of the log by game,
-- player and day, which also serves the runs' reads of a game's notes in place of the
-- index by game. (The player's row of the game's partition is found through an index
-- each run builds after filling the partition: segmentation._index_window_cache.)
DROP INDEX segmentation.activity_changes_game_idx;
CREATE INDEX activity_changes_player_idx
    ON segmentation.activity_changes (game_id, player_id, activity_date);
