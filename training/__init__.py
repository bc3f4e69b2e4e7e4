"""callgate's training module: data, SFT, DPO, RAFT, evaluation, export, and the demo model.

It imports the server's pure tool-call core (formats, chat templates, validation) so that what
is trained, scored and served is parsed by the same code; the server never imports this package.
"""
