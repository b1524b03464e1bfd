"""The `tiergen` command."""

import os

# gRPC's core writes lines of its own to stderr unless told its level (an "I..." line for every
# failed TLS handshake, for one); the command says what failed in one line of its own. Set
# before anything imports grpc, which reads it then; an explicit setting is kept.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
