"""The commands beside `apply`: report (audit), inspect, diff, probe, verify."""
