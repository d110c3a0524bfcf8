"""Transforms for transplants across architecture changes (docs/guide/transplant.md): small pure functions
on tensors, one module per family (`fuse`: chunk/cat, `rotary`: the HF <-> Meta permutation;
position tables, conv stems and vocab rows beside them), and one dispatch (`apply`). Same
layer as `schemes/`: no rules, no files; the planner calls them."""
