"""Timeouts of the flows' tasks: long enough for their work, short enough that a hung call surfaces.

A task that passes its timeout fails (Prefect's TimeoutError) and its flow run
shows why; claimed images come back when their lease expires. Figures are
per call, for a batch of up to 64 images on a CPU worker (the slow case):

- PREPARE: claim + read + decode a batch; reads run 8 at a time, each capped by
  CLASP_HTTP_TIMEOUT_S (20 s): 64 images -> 8 rounds x 20 s = 160 s at worst.
- LOAD_MODEL: building the Segmenter once per process (weights from disk).
- SEGMENT: the engine on one batch; on CPU the pixel variant takes up to ~30 s
  for a large image: 64 x 30 s = 1920 s.
- STORE: one transaction of masks and diagnostics (+ overlays).
- BOOKKEEPING: opening/closing a run row, counting statuses.
"""

PREPARE = 600
LOAD_MODEL = 900
SEGMENT = 2400
STORE = 600
BOOKKEEPING = 120
# The longest a healthy worker holds a claim: prepared, waiting while the previous batch
# is segmented, segmented, stored. Past it the lease keeper stops renewing (flows/lease.py):
# a worker stuck inside a call loses the images to another worker.
MAX_CLAIM_HOLD = PREPARE + 2 * SEGMENT + STORE

# Ingest: a chunk of 1000 URIs; with hash_content each image is read (8 at a time,
# 20 s cap each): 1000 / 8 x 20 s = 2500 s at worst. Listing a source: a folder walk
# or one URI-list file.
REGISTER = 3600
LIST_SOURCE = 600
# Label Studio hand-off: everything segmented and not yet pushed goes in one task
# (~0.3 s per image with RLE encoding and import: 10,000 images ~ 3000 s); a sync
# pages through every finished task of the project.
PUSH = 3600
SYNC = 1800
