"""The public API's implementation; import it from :mod:`chunked`, not from here."""
