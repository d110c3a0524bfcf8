"""Recipes: `reinit run RECIPE.(yaml|yml|toml|json) [--set KEY=VALUE]...`.

A recipe holds what `reinit apply`'s flags hold (keys named like the flags, `-` -> `_`), and
optionally `steps:`, a list of rule sets applied one after another where each step reads the
previous step's tensors in memory: no intermediate file is written, and the final output is
byte-identical to running the steps one after another with files in between.

Parsing keeps where every key was written (YAML via the compose API's node marks, JSON via a
small scanner over `json.decoder`, TOML by finding the key in the text, since tomllib keeps
no positions), so every error names the file and line of the key at fault."""
