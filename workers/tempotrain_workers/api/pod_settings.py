"""What a user adds to the pods the operator makes: pull secrets for a private registry, and
environment (HF_TOKEN from a Secret, proxies, NCCL settings). The same fields as Kubernetes'
own, checked at `kubectl apply`. The chart sets defaults for every experiment (the
operator's `--worker-pod-defaults`); an experiment's `spec.workers` adds to them."""

from __future__ import annotations

from typing import Self

from pydantic import ConfigDict, Field, model_validator

from tempotrain_workers.api.base import CEL, WireModel, cel

# A DNS-1123 subdomain: the name of a Secret or ConfigMap.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


class LocalObjectReference(WireModel):
    name: str = Field(pattern=OBJECT_NAME_PATTERN, max_length=253)


class KeySelector(WireModel):
    """A key of a Secret or ConfigMap in the experiment's namespace."""

    name: str = Field(pattern=OBJECT_NAME_PATTERN, max_length=253)
    key: str = Field(min_length=1, max_length=253)
    optional: bool | None = None


class FieldSelector(WireModel):
    field_path: str = Field(min_length=1, max_length=256, description="e.g. metadata.name")


class EnvVarSource(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)]"
                    ".filter(x, x).size() == 1",
                    "set exactly one of secretKeyRef, configMapKeyRef and fieldRef",
                )
            ]
        }
    )
    secret_key_ref: KeySelector | None = None
    config_map_key_ref: KeySelector | None = None
    field_ref: FieldSelector | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:  # the CEL rule, for settings that skip the apiserver
        chosen = [self.secret_key_ref, self.config_map_key_ref, self.field_ref]
        if sum(source is not None for source in chosen) != 1:
            raise ValueError("set exactly one of secretKeyRef, configMapKeyRef and fieldRef")
        return self


class EnvVar(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            CEL: [cel("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom")]
        }
    )
    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=256)
    value: str | None = Field(default=None, max_length=32768)
    value_from: EnvVarSource | None = None

    @model_validator(mode="after")
    def _one_value(self) -> Self:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"{self.name}: set value or valueFrom")
        return self


class SourceReference(WireModel):
    name: str = Field(pattern=OBJECT_NAME_PATTERN, max_length=253)
    optional: bool | None = None


class EnvFromSource(WireModel):
    """Every key of a Secret or ConfigMap as an environment variable."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "has(self.secretRef) != has(self.configMapRef)",
                    "set exactly one of secretRef and configMapRef",
                )
            ]
        }
    )
    prefix: str | None = Field(default=None, max_length=128)
    secret_ref: SourceReference | None = None
    config_map_ref: SourceReference | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("set exactly one of secretRef and configMapRef")
        return self


class PodSettings(WireModel):
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="on top of the operator's defaults"
    )
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=16)

    def over(self, defaults: PodSettings) -> PodSettings:
        """These settings on top of ``defaults``: a variable set in both is this one's;
        pull secrets and envFrom sources add up."""
        mine = {variable.name for variable in self.env}
        secrets = {s.name: s for s in [*defaults.image_pull_secrets, *self.image_pull_secrets]}
        return PodSettings(
            image_pull_secrets=list(secrets.values()),
            env=[v for v in defaults.env if v.name not in mine] + self.env,
            env_from=[*defaults.env_from, *self.env_from],
        )
