variable "cloud" {
  description = "Entry of clouds.yaml with the project's OpenStack credentials."
  type        = string
}

variable "environment" {
  description = "staging or production (names and tags every resource)."
  type        = string
  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment must be staging or production."
  }
}

variable "image_name" {
  description = "Glance image of the service and trainer hosts (Debian 12 with Docker)."
  type        = string
  default     = "debian-12-docker"
}

variable "service_flavor" {
  description = "Flavor of each service instance (2+ vCPU, 8+ GB RAM)."
  type        = string
  default     = "m1.large"
}

variable "service_count" {
  description = "Service instances behind the load balancer."
  type        = number
  default     = 2
}

variable "gpu_flavor" {
  description = "Flavor of the training node (with a GPU)."
  type        = string
  default     = "g1.xlarge"
}

variable "gpu_count" {
  description = "Training nodes (0: none; train elsewhere)."
  type        = number
  default     = 1
}

variable "volume_size_gb" {
  description = "Size of the data volume (DICOM spool, records backups)."
  type        = number
  default     = 200
}

variable "external_network" {
  description = "Name of the external network floating IPs come from."
  type        = string
  default     = "public"
}

variable "hospital_cidr" {
  description = "The hospital network allowed to reach HTTPS and DICOM (never the whole internet)."
  type        = string
}

variable "ssh_key_name" {
  description = "Keypair for operators' SSH access."
  type        = string
}
