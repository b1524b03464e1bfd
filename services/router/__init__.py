"""Router service: routing policy, prices, jobs, lineage, assets and the operations on them."""
