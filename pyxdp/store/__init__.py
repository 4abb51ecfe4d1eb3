"""The pinned state in one pin directory: the directory and its lock, the
maps, the config slots and their grace periods, the journal, sets, rules,
flows, attachments and migration between layouts."""
