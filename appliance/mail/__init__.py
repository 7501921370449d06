"""The SMTP relay channel: engine glue, handler, spool, delivery, DSN (one module each)."""
