"""Reading the streams: join, read, claim, acknowledge, dead letters, trim."""
