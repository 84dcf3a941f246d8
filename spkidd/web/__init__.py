"""The household's web page, served by the daemon: who is speaking now, the voices it knows, the voices it could not
name, and enrolling a voice from kept clips or the browser's microphone."""
