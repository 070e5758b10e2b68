"""fedgin's GIN inside other trainers. Each integration is its own module and imports its framework (an extra)."""
