"""What this host keeps between commands: verified chunks (:mod:`.chunks`) and the record
of files earlier pulls wrote (:mod:`.pulls`)."""
