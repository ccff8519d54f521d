"""Where frames come from: watched folders and live cameras."""
