"""Placeholder: being written (issue 10)."""

from fastapi import APIRouter

router = APIRouter()
