"""Running a plan: stream it into the output files (or into memory) and publish them."""
