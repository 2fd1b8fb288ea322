"""Piston v2 (`/api/v2`): its REST routes and its WebSocket."""
