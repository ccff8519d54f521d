"""Alert events, the on-disk outbox, the dispatcher and one module per sink."""
