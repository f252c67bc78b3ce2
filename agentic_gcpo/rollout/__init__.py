"""Trajectories: the agent loop, chat rendering, tool-call parsing and golden builders."""
