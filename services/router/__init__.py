"""Router service: routing policy, prices, jobs, lineage, assets and orchestration."""
