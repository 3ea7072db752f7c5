"""What this machine can export and check: installed toolchains per runtime (``edgepack toolchains list``) and
the host facts that change results (``edgepack toolchains doctor``)."""
