"""The wire format shared by TV and cloud: schema, codec, quantisation (sans-I/O)."""
