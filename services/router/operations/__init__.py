"""Operations: what the router does with a request, from its plan to its settled credits.

`planning` turns a Generate, Promote, Upscale or Edit into a plan (its jobs, its price, the work
each job does); `batches` runs every plan the one same way (admit, hold, record, run, store,
settle); `recovery` keeps the leases of running batches and takes over those of routers that are
gone; `orchestrator` is the face the gRPC edge calls.
"""
