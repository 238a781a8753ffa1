"""Service load balancing: Maglev tables (and, later, LB IPAM and the L4 data paths)."""
