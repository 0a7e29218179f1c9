"""CI build matrices: cells.py plans the cells a recipe needs (and merges what they built);
local.py runs the cells this machine can build as parallel processes."""
