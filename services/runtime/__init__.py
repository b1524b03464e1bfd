"""What every Tiergen service shares: settings, server bootstrap, telemetry and error mapping."""
