package server

import (
	"log/slog"

	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// adminService implements tresor.v1.AdminService.
type adminService struct {
	tresorv1.UnimplementedAdminServiceServer
	logger *slog.Logger
}
