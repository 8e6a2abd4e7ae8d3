from __future__ import annotations

from typing import Any

from django import forms

from .models import Kind


class ReportForm(forms.Form):
    kind = forms.ChoiceField(choices=Kind.choices, initial=Kind.JOB_ACTIVITY)
    title = forms.CharField(max_length=200, required=False, help_text="Optional")
    start = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From"
    )
    end = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To"
    )
    query = forms.CharField(
        max_length=200, required=False, label="Pages whose title has", help_text="Notes export"
    )

    def parameters(self) -> dict[str, Any]:
        data = self.cleaned_data
        if data["kind"] == Kind.JOB_ACTIVITY:
            return {k: data[k].isoformat() for k in ("start", "end") if data.get(k)}
        return {"query": data.get("query") or ""}
