"""The release lifecycle: staging -> canary -> production, moved on evidence and rolled back in one step."""
