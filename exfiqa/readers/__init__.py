"""Readers: benchmark files on disk -> aligned RGB uint8 112x112 faces and the comparison protocol.

No torch; nothing here evaluates or extracts."""
