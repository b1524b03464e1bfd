"""Jobs: the records of batches and their jobs, their lifecycle, and the stores that keep them."""
