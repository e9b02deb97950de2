"""The client model: session, rooms, schedule, REST backfill, the delivery ledger."""
